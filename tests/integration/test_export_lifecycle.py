"""Exports don't outlive their purpose, against real (moto) S3.

* The worker puts lifecycle rules on the exports bucket before it stages anything: packages expire
  a day after their url, abandoned staging files after ``staging_days``, old versions and
  unfinished uploads after a day. Other rules on the bucket are kept.
* A later erasure of the same subject deletes that subject's earlier packages, every version, and
  staged files an earlier export left behind; other subjects' packages stay.
* A presigned url's ``expires_at`` is never later than the signing credentials' expiry.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.session
import pytest
from botocore.credentials import CredentialProvider, RefreshableCredentials

from devkit import services
from devkit.pipeline import Receipts, subject_command
from devkit.pipeline import export_worker as running_export_worker
from worker.app import Worker
from worker.core.errors import ConfigError, RetryableError
from worker.export import ExportStore, lifecycle
from worker.export.signing import signing_expiry
from worker.receipts import PACKAGE_TASK
from worker.support import publish_command

pytestmark = pytest.mark.s3

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
FOREIGN_RULE = {
    "ID": "archive-invoices",
    "Filter": {"Prefix": "invoices/"},
    "Status": "Enabled",
    "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
}


def versions(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        found += page.get("Versions", []) + page.get("DeleteMarkers", [])
    return found


# -- lifecycle rules --------------------------------------------------------------------------------


def test_staging_applies_the_lifecycle_rules_and_keeps_other_rules(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [FOREIGN_RULE]})
    store = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 72, "staging_days": 60})
    assert lifecycle.missing(s3_client, store.settings) == [r["ID"] for r in lifecycle.rules(store.settings)]

    store.writer(str(uuid.uuid4()), "loyalty").write_json("summary", {"points": 1})

    rules = {r["ID"]: r for r in s3_client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]}
    assert set(rules) == {"archive-invoices", "oubli-export-packages", "oubli-export-staging",
                          "oubli-export-delete-markers"}
    assert rules["archive-invoices"]["Transitions"][0]["StorageClass"] == "GLACIER"
    packages, staging = rules["oubli-export-packages"], rules["oubli-export-staging"]
    assert packages["Filter"]["Prefix"] == "exports/packages/" and packages["Expiration"]["Days"] == 4
    assert staging["Filter"]["Prefix"] == "exports/staging/" and staging["Expiration"]["Days"] == 60
    for rule in (packages, staging):
        assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
        assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    assert rules["oubli-export-delete-markers"]["Expiration"]["ExpiredObjectDeleteMarker"] is True
    assert lifecycle.missing(s3_client, store.settings) == []
    assert lifecycle.ensure(s3_client, store.settings) is False  # already in place: no write


def test_changed_settings_replace_only_oubli_rules(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [FOREIGN_RULE]})
    week = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 168})
    assert lifecycle.ensure(s3_client, week.settings) is True
    hours = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 12})
    assert lifecycle.missing(s3_client, hours.settings) == ["oubli-export-packages"]
    assert lifecycle.ensure(s3_client, hours.settings) is True
    rules = {r["ID"]: r for r in s3_client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]}
    assert rules["oubli-export-packages"]["Expiration"]["Days"] == 2
    assert len(rules) == 4 and "archive-invoices" in rules


def test_external_lifecycle_leaves_the_bucket_alone(s3_client: Any, s3_bucket: str) -> None:
    store = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "lifecycle": "external"})
    store.writer(str(uuid.uuid4()), "loyalty").write_json("summary", {"points": 1})
    with pytest.raises(s3_client.exceptions.ClientError) as caught:
        s3_client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)
    assert caught.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
    for bad in ({"lifecycle": "maybe"}, {"staging_days": 0}, {"staging_days": 1.5}):
        with pytest.raises(ConfigError):
            ExportStore.from_settings(s3_client, {"bucket": s3_bucket, **bad})


# -- presigned urls never outlive their credentials -------------------------------------------------


class _ExpiringSession(CredentialProvider):  # type: ignore[misc]
    """Temporary credentials with a known expiry, as an assumed role or web identity gives them."""

    METHOD = "test-session"

    def __init__(self, expiry: datetime) -> None:
        super().__init__()
        self.expiry = expiry

    def load(self) -> RefreshableCredentials:
        def refresh() -> dict[str, str]:
            return {"access_key": "testing", "secret_key": "testing", "token": "session-token",
                    "expiry_time": self.expiry.isoformat()}

        return RefreshableCredentials.create_from_metadata(refresh(), refresh, self.METHOD)


def session_client(expiry: datetime) -> Any:
    core = botocore.session.get_session()
    core.get_component("credential_provider").insert_before("env", _ExpiringSession(expiry))
    return boto3.Session(botocore_session=core, region_name="eu-west-1").client(
        "s3", endpoint_url=services.require_s3()
    )


def test_url_expiry_is_capped_at_the_signing_session(s3_bucket: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    session_end = now + timedelta(hours=2)
    client = session_client(session_end)
    assert signing_expiry(client) == session_end  # botocore still keeps the expiry where we read it
    store = ExportStore.from_settings(client, {"bucket": s3_bucket, "url_ttl_hours": 72})
    store.writer("R-session", "loyalty").write_json("summary", {"points": 1})

    info = store.build_package("R-session", {"loyalty": 1}, now)
    assert info.expires_at == session_end
    query = parse_qs(urlsplit(info.url).query)
    assert query["X-Amz-Expires"] == ["7200"] and query["X-Amz-Security-Token"] == ["session-token"]

    long_session = session_client(now + timedelta(days=30))
    longer = ExportStore.from_settings(long_session, {"bucket": s3_bucket, "url_ttl_hours": 72})
    assert longer.build_package("R-session", {"loyalty": 1}, now).expires_at == now + timedelta(hours=72)

    # A session that ends within minutes (it could not be renewed) gives no url: try again later.
    with pytest.raises(RetryableError):
        store.build_package("R-session", {"loyalty": 1}, session_end - timedelta(minutes=2))


def test_long_term_keys_have_no_session_expiry(s3_client: Any) -> None:
    assert signing_expiry(s3_client) is None


# -- a later erasure deletes the subject's earlier packages -----------------------------------------


@pytest.fixture
def export_worker(pg_url: str, kafka_bootstrap: str, s3_bucket: str) -> Iterator[tuple[Worker, Receipts, Any]]:
    systems = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    with running_export_worker(systems, store_url=pg_url, bootstrap=kafka_bootstrap, bucket=s3_bucket) as running:
        yield running


@pytest.mark.postgres
def test_erasure_deletes_the_subjects_earlier_packages(export_worker: Any, s3_client: Any, s3_bucket: str) -> None:
    worker, receipts, settings = export_worker
    customer = f"C-{uuid.uuid4().hex[:8]}"
    exports = [subject_command("export", customer_id=customer) for _ in range(2)]
    other = subject_command("export")
    for command in [*exports, other]:
        publish_command(settings.kafka, command)
    done = {c["request_id"]: receipts.wait(c["request_id"], {"completed"}, step=worker.run_once)
            for c in [*exports, other]}
    keys = [done[c["request_id"]]["export"]["object_key"] for c in exports]
    # A rebuilt package leaves an older version in a versioned bucket, and an abandoned attempt
    # leaves staged files: both are the subject's data too.
    s3_client.put_object(Bucket=s3_bucket, Key=keys[0], Body=b"an older build")
    abandoned = f"exports/staging/{exports[1]['request_id']}/alpha/leftover.json"
    s3_client.put_object(Bucket=s3_bucket, Key=abandoned, Body=io.BytesIO(b"{}"))
    assert all(versions(s3_client, s3_bucket, key) for key in keys)

    erasure = subject_command("erasure", customer_id=customer)
    publish_command(settings.kafka, erasure)
    receipt = receipts.wait(erasure["request_id"], {"completed"}, step=worker.run_once)

    assert [s["system"] for s in receipt["systems"]] == ["alpha"]  # the package step stays hidden
    for key in keys:
        assert versions(s3_client, s3_bucket, key) == []
        assert versions(s3_client, s3_bucket, key.removesuffix(".zip") + ".done.json") == []
    assert versions(s3_client, s3_bucket, f"exports/staging/{exports[1]['request_id']}/") == []
    assert versions(s3_client, s3_bucket, done[other["request_id"]]["export"]["object_key"])  # not theirs
    _, tasks, _ = worker.store.get(erasure["request_id"])
    step = next(t for t in tasks if t["system"] == PACKAGE_TASK)
    assert (step["outcome"], step["records"]) == ("erased", 2)

    again = subject_command("erasure", customer_id=customer)  # nothing left: a repeat deletes nothing
    publish_command(settings.kafka, again)
    receipts.wait(again["request_id"], {"completed"}, step=worker.run_once)
    _, tasks, _ = worker.store.get(again["request_id"])
    assert next(t["outcome"] for t in tasks if t["system"] == PACKAGE_TASK) == "not_found"
