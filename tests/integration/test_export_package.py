"""The export package against real (moto) S3: contents, manifest, README, url, idempotency."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from worker.core.errors import ConfigError, PermanentError, StagingLost
from worker.export import ExportStore

pytestmark = pytest.mark.s3

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
REQUEST = "5f0c9a8e-3c1e-4f4a-9d55-0d2b1f7b8a10"


@pytest.fixture
def store(s3_client: Any, s3_bucket: str) -> ExportStore:
    return ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "prefix": "exports/", "part_size_mb": 5})


def stage_sample(store: ExportStore) -> None:
    orders = store.writer(REQUEST, "orders_db")
    orders.write_rows("customers", [{"customer_id": "C-1", "email": "marie.dupont@example.fr", "city": "Aurillac"}])
    orders.write_rows(
        "orders",
        [
            {"order_id": "O-1", "total": "12.50", "placed_at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC)},
            {"order_id": "O-2", "total": "7.00", "note": "porte, 2e étage"},
        ],
    )
    store.writer(REQUEST, "call_recordings").write_stream(
        "recordings/call-1.wav", io.BytesIO(b"RIFF" + bytes(range(256)) * 100), content_type="audio/wav"
    )
    store.writer(REQUEST, "loyalty").write_json("summary", {"points": 120})


def download(url: str) -> bytes:
    with httpx.Client(timeout=30) as client:
        response = client.get(url)
    assert response.status_code == 200
    return response.content


def test_package_holds_every_file_with_manifest_and_readme(store: ExportStore, s3_client: Any) -> None:
    stage_sample(store)
    info = store.build_package(REQUEST, {"orders_db": 3, "call_recordings": 1, "loyalty": 1, "facebook": 0}, NOW)

    body = download(info.url)
    assert hashlib.sha256(body).hexdigest() == info.sha256
    assert len(body) == info.size_bytes
    assert info.object_key == f"exports/packages/{REQUEST}.zip"
    assert info.expires_at == NOW + timedelta(hours=72)

    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert {
        "manifest.json",
        "README.en.md",
        "README.fr.md",
        "orders_db/customers.json",
        "orders_db/customers.csv",
        "orders_db/orders.json",
        "orders_db/orders.csv",
        "call_recordings/recordings/call-1.wav",
        "loyalty/summary.json",
    } == names

    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["request_id"] == REQUEST
    assert manifest["generated_at"] == "2026-11-24T10:00:00Z"
    assert manifest["systems"]["orders_db"]["records"] == 3
    assert manifest["systems"]["facebook"] == {"records": 0, "files": []}
    for system in manifest["systems"].values():
        for entry in system["files"]:
            data = archive.read(entry["name"])
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert len(data) == entry["size_bytes"]

    orders = json.loads(archive.read("orders_db/orders.json"))
    assert orders[0]["placed_at"] == "2026-01-02T03:04:00+00:00"
    rows = list(csv.DictReader(io.StringIO(archive.read("orders_db/orders.csv").decode("utf-8-sig"))))
    assert [r["order_id"] for r in rows] == ["O-1", "O-2"]
    assert rows[1]["note"] == "porte, 2e étage" and rows[0]["note"] == ""
    assert archive.getinfo("call_recordings/recordings/call-1.wav").compress_type == zipfile.ZIP_STORED

    english = archive.read("README.en.md").decode()
    french = archive.read("README.fr.md").decode()
    assert "Art. 15" in english and "art. 15" in french
    assert "Shopimind" in english and "Nosto" in french and "Google Ads" in french
    assert "Retention periods" in english and "Durées de conservation" in french
    assert "CNIL" in english and "CNIL" in french
    assert "orders_db/: 3 records" in english and "facebook/: aucune donnée détenue" in french

    head = s3_client.head_object(Bucket=store.settings.bucket, Key=info.object_key)
    assert head["ServerSideEncryption"] == "AES256"


def test_url_lifetime_defaults_to_72h_and_never_exceeds_7_days(s3_client: Any, s3_bucket: str) -> None:
    with pytest.raises(ConfigError):
        ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 169})
    with pytest.raises(ConfigError):
        ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 0})
    week = ExportStore.from_settings(s3_client, {"bucket": s3_bucket, "url_ttl_hours": 168})
    week.writer(REQUEST, "loyalty").write_json("summary.json", {"points": 1})
    info = week.build_package(REQUEST, {"loyalty": 1}, NOW)
    assert info.expires_at == NOW + timedelta(days=7)
    assert parse_qs(urlsplit(info.url).query)["X-Amz-Expires"] == [str(7 * 24 * 3600)]
    default = ExportStore.from_settings(s3_client, {"bucket": s3_bucket})
    assert default.settings.url_ttl_hours == 72


def test_rebuild_after_a_crash_gives_a_complete_package(store: ExportStore, s3_client: Any) -> None:
    stage_sample(store)
    key = store.package_key(REQUEST)
    bucket = store.settings.bucket
    # A build that died half-way: an open multipart upload with one part, and no package.
    stale = s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    s3_client.upload_part(Bucket=bucket, Key=key, UploadId=stale["UploadId"], PartNumber=1, Body=b"x" * 1024)

    info = store.build_package(REQUEST, {"orders_db": 3}, NOW)
    assert s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
    assert zipfile.ZipFile(io.BytesIO(download(info.url))).testzip() is None

    again = store.build_package(REQUEST, {"orders_db": 3}, NOW + timedelta(minutes=5))
    assert (again.object_key, again.sha256, again.size_bytes) == (info.object_key, info.sha256, info.size_bytes)
    assert again.expires_at == NOW + timedelta(minutes=5, hours=72)

    store.discard_staging(REQUEST)
    staged = s3_client.list_object_versions(Bucket=bucket, Prefix=f"exports/staging/{REQUEST}/")
    assert not staged.get("Versions") and not staged.get("DeleteMarkers")
    after = store.build_package(REQUEST, {"orders_db": 3}, NOW)
    assert after.sha256 == info.sha256
    assert hashlib.sha256(download(after.url)).hexdigest() == info.sha256


def test_changed_inputs_rebuild_and_leave_one_version(store: ExportStore, s3_client: Any) -> None:
    stage_sample(store)
    first = store.build_package(REQUEST, {"orders_db": 3}, NOW)
    store.writer(REQUEST, "loyalty").write_json("summary", {"points": 150})
    second = store.build_package(REQUEST, {"orders_db": 3}, NOW)
    assert second.sha256 != first.sha256
    versions = s3_client.list_object_versions(Bucket=store.settings.bucket, Prefix=second.object_key)
    assert len([v for v in versions.get("Versions", []) if v["Key"] == second.object_key]) == 1
    archive = zipfile.ZipFile(io.BytesIO(download(second.url)))
    assert json.loads(archive.read("loyalty/summary.json")) == {"points": 150}


def test_a_retried_export_leaves_only_the_last_attempts_files(store: ExportStore) -> None:
    first = store.writer(REQUEST, "call_recordings")
    first.write_stream("recordings/a.wav", io.BytesIO(b"a"))
    first.write_stream("recordings/b.wav", io.BytesIO(b"b"))
    store.writer(REQUEST, "call_recordings").write_stream("recordings/b.wav", io.BytesIO(b"b2"))
    store.writer(REQUEST, "loyalty").write_json("summary", {"points": 1})
    info = store.build_package(REQUEST, {"call_recordings": 1, "loyalty": 1}, NOW)
    archive = zipfile.ZipFile(io.BytesIO(download(info.url)))
    assert archive.read("call_recordings/recordings/b.wav") == b"b2"
    assert "call_recordings/recordings/a.wav" not in archive.namelist()
    assert "loyalty/summary.json" in archive.namelist()


def test_empty_export_still_gives_a_package(store: ExportStore) -> None:
    info = store.build_package(REQUEST, {"orders_db": 0, "loyalty": 0}, NOW)
    archive = zipfile.ZipFile(io.BytesIO(download(info.url)))
    assert sorted(archive.namelist()) == ["README.en.md", "README.fr.md", "manifest.json"]


def test_names_that_escape_the_staging_area_are_refused(store: ExportStore) -> None:
    writer = store.writer(REQUEST, "orders_db")
    for bad in ("../other/file.json", "/abs.json", "a/../../b.json", "", "x" * 300):
        with pytest.raises(PermanentError):
            writer.write_json(bad, {})
    # A request id is the sender's (command.v1 allows "../x"): it is named by its digest, inside the staging area.
    escaping = store.writer("../x", "orders_db").base
    assert escaping.startswith("exports/staging/_") and ".." not in escaping and escaping.count("/") == 4
    with pytest.raises(PermanentError):
        store.writer(REQUEST, "Orders/DB")


def test_missing_bucket_is_permanent_and_names_no_personal_data(s3_client: Any) -> None:
    store = ExportStore.from_settings(s3_client, {"bucket": "no-such-bucket-oubli"})
    with pytest.raises(PermanentError) as caught:
        store.writer(REQUEST, "orders_db").write_rows("customers", [{"email": "marie.dupont@example.fr"}])
    assert "marie" not in str(caught.value)
    assert "customers" not in str(caught.value)


def test_files_larger_than_a_part_stream_through_multipart(store: ExportStore, s3_client: Any) -> None:
    payload = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32)  # 12 MiB, 3 parts of 5 MiB
    store.writer(REQUEST, "call_recordings").write_stream("recordings/long.wav", io.BytesIO(payload))
    staged = s3_client.head_object(
        Bucket=store.settings.bucket, Key=f"exports/staging/{REQUEST}/call_recordings/recordings/long.wav"
    )
    assert staged["ContentLength"] == len(payload) and staged["ServerSideEncryption"] == "AES256"
    info = store.build_package(REQUEST, {"call_recordings": 1}, NOW)
    assert info.size_bytes > len(payload)
    body = download(info.url)
    assert hashlib.sha256(body).hexdigest() == info.sha256
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.read("call_recordings/recordings/long.wav") == payload


def _staged_versions(s3_client: Any, bucket: str, part: str) -> list[dict[str, str]]:
    listed = s3_client.list_object_versions(Bucket=bucket, Prefix="exports/staging/")
    return [{"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])] if part in v["Key"]]


def _lose(s3_client: Any, bucket: str, part: str) -> None:
    """What a lifecycle expiry (or a store that restarted empty) does to staged objects: every version goes."""
    s3_client.delete_objects(Bucket=bucket, Delete={"Objects": _staged_versions(s3_client, bucket, part)})


def _package_exists(s3_client: Any, bucket: str) -> bool:
    return bool(s3_client.list_objects_v2(Bucket=bucket, Prefix="exports/packages/").get("KeyCount"))


def stage_sealed(store: ExportStore) -> None:
    for system, name in (("orders_db", "orders"), ("call_recordings", "recordings/call-1.wav")):
        writer = store.writer(REQUEST, system)
        writer.write_stream(name, io.BytesIO(system.encode() * 100))
        writer.seal()


@pytest.mark.parametrize("lost", ["staging/", "call_recordings/", "call_recordings.json"])
def test_staged_files_lost_before_packaging_fail_it_naming_the_system_and_publish_nothing(
        store: ExportStore, s3_client: Any, s3_bucket: str, lost: str) -> None:
    """Every file, only one system's files (its record left), or everything of a system that wrote no record."""
    stage_sealed(store)
    if lost == "call_recordings.json":
        _lose(s3_client, s3_bucket, "call_recordings")
    else:
        _lose(s3_client, s3_bucket, lost)
    with pytest.raises(StagingLost) as caught:
        store.build_package(REQUEST, {"orders_db": 2, "call_recordings": 4}, NOW)
    assert caught.value.code == "export_staging_lost"
    expected = ("call_recordings", "orders_db") if lost == "staging/" else ("call_recordings",)
    assert caught.value.systems == expected and REQUEST not in caught.value.message
    assert not _package_exists(s3_client, s3_bucket)


def test_a_staged_file_that_changed_size_or_content_fails_packaging(store: ExportStore, s3_client: Any,
                                                                   s3_bucket: str) -> None:
    stage_sealed(store)
    key = f"exports/staging/{REQUEST}/orders_db/orders"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * 900)  # same size, other bytes
    with pytest.raises(StagingLost) as caught:
        store.build_package(REQUEST, {"orders_db": 2, "call_recordings": 4}, NOW)
    assert caught.value.systems == ("orders_db",) and not _package_exists(s3_client, s3_bucket)
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"short")
    with pytest.raises(StagingLost):
        store.build_package(REQUEST, {"orders_db": 2, "call_recordings": 4}, NOW)


def test_a_sealed_staging_with_every_file_packages_without_its_records(store: ExportStore) -> None:
    stage_sealed(store)
    info = store.build_package(REQUEST, {"orders_db": 2, "call_recordings": 4, "facebook": 0}, NOW)
    names = zipfile.ZipFile(io.BytesIO(download(info.url))).namelist()
    assert "orders_db/orders" in names and "call_recordings/recordings/call-1.wav" in names
    assert not [n for n in names if n.endswith(("orders_db.json", "call_recordings.json"))]
