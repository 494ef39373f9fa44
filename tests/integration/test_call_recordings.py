"""call_recordings against moto's S3 server: versions, delete markers, Object Lock, batching, export."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from connectors import call_recordings
from connectors.call_recordings import CallRecordingsConnector, RecordingsSettings, make_client
from devkit import services
from devkit.netproxy import Proxy
from devkit.sampledata import Recording
from devkit.sampledata.audio import synthetic_wav
from devkit.sampledata.load import recording_key, recording_metadata, upload_recordings
from tests.conformance import ConnectorConformance, MemoryExportWriter, assert_no_personal_data
from tests.integration.test_sql_support import AS_OF, context
from worker.core.connector import Retained, Subject
from worker.core.errors import ConfigError, PermanentError, RetryableError

pytestmark = pytest.mark.s3
LAYOUT = "recordings/{customer_id}/{yyyy}/{mm}/{call_id}.wav"


def subject(customer_id: str) -> Subject:
    return Subject(request_id=str(uuid.uuid4()), subject_ref="hmac-sha256:x", customer_id=customer_id)


def recording(customer_id: str, n: int, when: datetime = AS_OF) -> Recording:
    return Recording(customer_id, f"CALL-{customer_id}-{n}", when - timedelta(days=n), 95 + n, "yann", "inbound")


def versions_under(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        items += page.get("Versions", []) + page.get("DeleteMarkers", [])
    return items


def connector_for(bucket: str, endpoint: str | None = None, **settings: Any) -> CallRecordingsConnector:
    client = {
        "endpoint_url": endpoint or services.S3_ENDPOINT,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "eu-west-1",
        "connect_timeout_s": 2,
        "read_timeout_s": 10,
    }
    return call_recordings.create("call_recordings", {"bucket": bucket, **client, **settings}, context())


def seed_customer(s3: Any, bucket: str, customer_id: str, calls: int = 2) -> list[str]:
    """Recordings, a second version of the first, and a deleted one (a delete marker over a version)."""
    recs = [recording(customer_id, n) for n in range(calls)]
    upload_recordings(s3, bucket, recs, LAYOUT)
    first = recording_key(LAYOUT, recs[0])
    s3.put_object(Bucket=bucket, Key=first, Body=b"RIFF re-encoded", Metadata=recording_metadata(recs[0]))
    s3.delete_object(Bucket=bucket, Key=recording_key(LAYOUT, recs[-1]))
    return [recording_key(LAYOUT, r) for r in recs]


class S3Harness:
    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket
        endpoint = urlsplit(services.S3_ENDPOINT)
        self.proxy = Proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
        self.connector = connector_for(bucket, f"http://127.0.0.1:{self.proxy.port}")

    def subject_with_data(self) -> Subject:
        customer_id = f"C-{uuid.uuid4().int % 10**8}"
        seed_customer(self.s3, self.bucket, customer_id)
        return subject(customer_id)

    def subject_without_data(self) -> Subject:
        return subject("C-999999999")

    def holds_personal_data(self, s: Subject) -> bool:
        return bool(versions_under(self.s3, self.bucket, f"recordings/{s.customer_id}/"))

    @contextlib.contextmanager
    def transient_failure(self) -> Iterator[None]:
        with self.proxy.outage():
            yield

    @contextlib.contextmanager
    def permanent_failure(self) -> Iterator[None]:
        """A bucket policy that denies deletes: access, not a lock; retrying cannot help."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:DeleteObject",
                    "Resource": f"arn:aws:s3:::{self.bucket}/*",
                }
            ],
        }
        self.s3.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))
        try:
            yield
        finally:
            self.s3.delete_bucket_policy(Bucket=self.bucket)

    def close(self) -> None:
        self.connector.close()
        self.proxy.close()


class TestCallRecordingsConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, s3_client: Any, s3_bucket: str) -> Iterator[S3Harness]:
        h = S3Harness(s3_client, s3_bucket)
        yield h
        h.close()


@pytest.fixture
def lock_bucket(s3_client: Any) -> str:
    name = f"t-lock-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}, ObjectLockEnabledForBucket=True
    )
    return name


def test_every_version_and_delete_marker_goes_and_neighbours_stay(s3_client: Any, s3_bucket: str) -> None:
    seed_customer(s3_client, s3_bucket, "C-1000", calls=3)
    seed_customer(s3_client, s3_bucket, "C-10000")  # shares the text prefix "recordings/C-1000"
    before = versions_under(s3_client, s3_bucket, "recordings/C-1000/")
    assert {bool(v.get("Size") is None) for v in before} == {True, False}  # versions and a delete marker
    connector = connector_for(s3_bucket)

    assert connector.erase(subject("C-1000")).outcome == "erased"
    assert versions_under(s3_client, s3_bucket, "recordings/C-1000/") == []
    assert len(versions_under(s3_client, s3_bucket, "recordings/C-10000/")) == 4
    assert connector.erase(subject("C-1000")).outcome == "not_found"


def test_locked_and_held_recordings_are_retained_with_a_date(s3_client: Any, lock_bucket: str) -> None:
    customer = "C-2000"
    keys = seed_customer(s3_client, lock_bucket, customer, calls=3)
    until = datetime(2031, 3, 31, tzinfo=UTC)
    s3_client.put_object(
        Bucket=lock_bucket,
        Key=keys[1],
        Body=synthetic_wav("x"),
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    later = datetime(2029, 1, 15, tzinfo=UTC)
    s3_client.put_object(
        Bucket=lock_bucket,
        Key=keys[1],
        Body=synthetic_wav("y"),
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=later,
    )
    s3_client.put_object(Bucket=lock_bucket, Key=keys[0], Body=synthetic_wav("z"), ObjectLockLegalHoldStatus="ON")
    connector = connector_for(lock_bucket)

    result = connector.erase(subject(customer))
    review = (AS_OF + timedelta(days=30)).date()
    assert result.outcome == "retained"
    assert set(result.retained) == {
        Retained("call recordings", "legal hold", review),
        Retained("call recordings", "object lock retention (compliance)", until.date()),
        Retained("call recordings", "object lock retention (governance)", later.date()),
    }
    left = versions_under(s3_client, lock_bucket, f"recordings/{customer}/")
    assert len(left) == 3 and all("Size" in v for v in left)  # only the three locked versions
    again = connector.erase(subject(customer))
    assert again == result


def test_more_than_a_thousand_versions_are_deleted_in_batches(s3_client: Any, s3_bucket: str) -> None:
    customer = "C-3000"

    def two_versions(n: int) -> None:
        key = f"recordings/{customer}/2026/01/CALL-{n}.wav"
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"a")
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"b")

    # Eight at a time: one by one, the 1,040 uploads were most of this test's minute in the suite.
    with ThreadPoolExecutor(8) as uploads:
        list(uploads.map(two_versions, range(520)))
    assert len(versions_under(s3_client, s3_bucket, f"recordings/{customer}/")) == 1040
    connector = connector_for(s3_bucket)
    calls: list[int] = []
    real = connector._client.delete_objects

    def counting(**kwargs: Any) -> Any:
        calls.append(len(kwargs["Delete"]["Objects"]))
        return real(**kwargs)

    connector._client.delete_objects = counting
    assert connector.erase(subject(customer)).outcome == "erased"
    assert calls == [1000, 40]
    assert versions_under(s3_client, s3_bucket, f"recordings/{customer}/") == []


@pytest.mark.parametrize(
    ("code", "error"),
    [("InternalError", RetryableError), ("SlowDown", RetryableError), ("InvalidArgument", PermanentError)],
)
def test_per_key_errors_are_checked(s3_client: Any, s3_bucket: str, code: str, error: type[Exception]) -> None:
    customer = "C-4000"
    keys = seed_customer(s3_client, s3_bucket, customer)
    connector = connector_for(s3_bucket)
    real = connector._client.delete_objects

    def failing_one(**kwargs: Any) -> Any:
        objects = kwargs["Delete"]["Objects"]
        response = real(**{**kwargs, "Delete": {**kwargs["Delete"], "Objects": objects[1:]}})
        response.setdefault("Errors", []).append(
            {"Key": objects[0]["Key"], "VersionId": objects[0]["VersionId"], "Code": code, "Message": "injected"}
        )
        return response

    connector._client.delete_objects = failing_one
    with pytest.raises(error) as caught:
        connector.erase(subject(customer))
    assert not isinstance(caught.value, RetryableError) or error is RetryableError
    assert_no_personal_data(str(caught.value), subject(customer))
    assert all(k not in str(caught.value) for k in keys)


def test_export_lists_recordings_with_metadata_and_includes_the_audio(s3_client: Any, s3_bucket: str) -> None:
    customer = "C-5000"
    recs = [recording(customer, n) for n in range(2)]
    upload_recordings(s3_client, s3_bucket, recs, LAYOUT)
    stray = recording("C-5001", 9)  # misfiled under C-5000's prefix: not theirs to receive
    s3_client.put_object(
        Bucket=s3_bucket, Key=f"recordings/{customer}/misfiled.wav", Body=b"RIFF", Metadata=recording_metadata(stray)
    )
    writer = MemoryExportWriter()
    result = connector_for(s3_bucket).export(subject(customer), writer)
    assert result.outcome == "exported" and result.records == 2
    rows = json.loads(writer.files["recordings.json"])
    assert {r["call-id"] for r in rows} == {r.call_id for r in recs}
    assert all(r["customer-id"] == customer and r["version_id"] and r["size_bytes"] > 0 for r in rows)
    for row, rec in zip(
        sorted(rows, key=lambda r: r["key"]), sorted(recs, key=lambda r: recording_key(LAYOUT, r)), strict=True
    ):
        assert writer.files[row["file"]] == synthetic_wav(rec.call_id, seconds=min(1.0, rec.duration_seconds / 60))
        assert row["file"].startswith("recordings/") and row["file"].count("/") == 1
    assert connector_for(s3_bucket).export(subject("C-5002"), MemoryExportWriter()).outcome == "not_found"


def test_layout_and_subject_are_validated(s3_bucket: str) -> None:
    for layout in ("recordings/{customer_id}", "recordings/", "{customer_id}/{other}/", "a/{customer_id}x"):
        with pytest.raises(ConfigError):
            connector_for(s3_bucket, key_prefix=layout)
    with pytest.raises(ConfigError):
        connector_for(s3_bucket, legal_hold_review_days=0)
    connector = connector_for(s3_bucket)
    for bad in ("", "C-1/../C-2", ".."):
        with pytest.raises(PermanentError):
            connector.erase(subject(bad))


def test_client_settings_disable_nested_retries() -> None:
    client = make_client(RecordingsSettings(bucket="b", client={"endpoint_url": "http://127.0.0.1:1"}))
    assert client.meta.config.retries["total_max_attempts"] == 1
