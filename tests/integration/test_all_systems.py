"""One customer, ten systems: export then erasure through Kafka, sample data, S3 and the vendor stand-ins."""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.request
import zipfile
from typing import Any

import sqlalchemy as sa

from devkit import allsystems, services
from devkit.pipeline import Receipts, raw_settings, settings_from
from worker import logs
from worker.app import Worker
from worker.core.timefmt import utcnow
from worker.support import build_command, publish_command

EXPECTED_ERASURE = {
    "orders_db": "retained", "loyalty": "erased", "newsletter": "erased", "contact_forms": "erased",
    "call_recordings": "erased", "facebook": "erased", "google_analytics": "requested",
    "google_ads": "requested", "nosto": "requested", "shopimind": "requested",
}


def test_export_then_erasure_across_all_ten_systems(
    pg_url: str, pg_schema_urls: Any, kafka_bootstrap: str, s3_client: Any, s3_bucket: str,
) -> None:
    as_of = utcnow()
    sql_urls = {system: pg_schema_urls() for system in allsystems.INTERNAL_SQL}
    exports_bucket = f"{s3_bucket}-x"
    s3_client.create_bucket(Bucket=exports_bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    report = allsystems.seed(sql_urls, s3_client, s3_bucket, as_of)
    assert report.recordings > 0
    subject = allsystems.demo_subject(as_of)
    vendors = allsystems.start_vendors(subject)
    s3 = {"endpoint_url": services.S3_ENDPOINT, "access_key_id": "testing", "secret_access_key": "testing"}
    systems = allsystems.systems_config(sql_urls, recordings_bucket=s3_bucket, s3=s3, vendors=vendors)
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems, identity_system="orders_db",
                       export={"bucket": exports_bucket}, s3=s3)
    settings = settings_from(raw)
    log_stream = io.StringIO()
    logs.configure(level="DEBUG", stream=log_stream)
    logging.getLogger().setLevel(logging.DEBUG)  # httpx, botocore and the rest log what they log
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        # The commands carry no vendor ids: oubli must find them in orders_db before erasing it.
        common = {"customer_id": subject.customer_id, "emails": [subject.email], "phones": [subject.phone]}
        export = build_command(kind="export", requested_by="account-service", **common)
        erasure = build_command(kind="erasure", requested_by="account-service", **common)
        publish_command(settings.kafka, export)
        exported = receipts.wait(export["request_id"], {"completed"}, step=worker.run_once, timeout=120)
        # Downloaded before the erasure is sent: the erasure deletes the subject's earlier packages.
        with urllib.request.urlopen(exported["export"]["url"], timeout=10) as response:  # noqa: S310 - presigned
            package = zipfile.ZipFile(io.BytesIO(response.read()))
        publish_command(settings.kafka, erasure)
        erased = receipts.wait(erasure["request_id"], {"completed", "action_required"}, step=worker.run_once,
                               timeout=120)
    finally:
        receipts.close()
        worker.close()

    assert erased["status"] == "completed", json.dumps(erased, indent=1)
    written = log_stream.getvalue()
    assert "system_call_finished" in written
    personal = [subject.email, subject.phone, subject.customer_id, *sum(subject.identifiers.values(), [])]
    for value in personal:  # as a whole token: the Shopimind id "88" may well appear inside a timestamp
        token = re.compile(rf"(?<![0-9A-Za-z.]){re.escape(value)}(?![0-9A-Za-z.])")
        assert not token.search(written), "personal data in the worker's logs"
        assert not any(token.search(record.decode()) for record in receipts.raw), "personal data in a receipt"
    outcomes = {s["system"]: s["outcome"] for s in erased["systems"]}
    assert outcomes == EXPECTED_ERASURE
    orders = next(s for s in erased["systems"] if s["system"] == "orders_db")
    assert orders["retained"][0]["category"] == "invoices"
    ga = next(s for s in erased["systems"] if s["system"] == "google_analytics")
    assert ga["expected_by"] is not None
    assert not any(vendors.holds_subject(emails=[subject.email], phones=[subject.phone],
                                         identifiers=subject.identifiers).values())

    gone = s3_client.list_object_versions(Bucket=exports_bucket, Prefix=exported["export"]["object_key"])
    assert not gone.get("Versions") and not gone.get("DeleteMarkers"), "the erasure left the export package"
    manifest = json.loads(package.read("manifest.json"))
    assert set(json.dumps(manifest).split('"')) >= {"orders_db", "loyalty", "call_recordings"}
    assert any(name.endswith(".wav") for name in package.namelist())

    for system in ("loyalty", "newsletter", "contact_forms"):
        engine = sa.create_engine(sql_urls[system], poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            for table in sa.inspect(engine).get_table_names():
                dump = repr(conn.execute(sa.text(f'SELECT * FROM "{table}"')).all())  # noqa: S608
                assert subject.email not in dump and subject.customer_id not in dump, (system, table)
        engine.dispose()
