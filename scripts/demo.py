"""The demo behind `make demo`: one customer's export and erasure across all ten systems, then a
dry run of the retention sweep over the sample data.

Kafka and S3 (moto) come from `scripts/stack up kafka s3`; the worker runs in this process on
SQLite, with the sample data in SQLite files and the vendors as local stand-ins. Every run starts
from fresh sample data, so it can be repeated.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from devkit import allsystems  # noqa: E402
from worker import config, kafka, logs, retention  # noqa: E402
from worker.app import Worker  # noqa: E402
from worker.cli import format_receipt, format_sweep  # noqa: E402
from worker.core.timefmt import utcnow  # noqa: E402
from worker.support import build_command, publish_command, read_receipt  # noqa: E402

S3 = {"endpoint_url": "http://127.0.0.1:5000", "access_key_id": "demo", "secret_access_key": "demo"}
DEMO = ROOT / ".cache" / "demo"


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    logs.configure(stream=(DEMO / "worker.log").open("w"))
    as_of = utcnow()
    run = uuid.uuid4().hex[:8]
    s3 = boto3.client("s3", endpoint_url=S3["endpoint_url"], region_name="eu-west-1",
                      aws_access_key_id="demo", aws_secret_access_key="demo")
    recordings, exports = f"demo-recordings-{run}", f"demo-exports-{run}"
    for bucket in (recordings, exports):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=recordings, VersioningConfiguration={"Status": "Enabled"})

    sql_urls = {system: f"sqlite:///{DEMO / system}.db" for system in allsystems.INTERNAL_SQL}
    started = time.monotonic()
    report = allsystems.seed(sql_urls, s3, recordings, as_of, customers=1000)
    print(f"seeded {report.customers} customers ({report.total_rows} rows, {report.recordings} call recordings) "
          f"in {time.monotonic() - started:.1f}s")
    subject = allsystems.demo_subject(as_of)
    vendors = allsystems.start_vendors(subject)
    settings = config.build({
        "store_url": f"sqlite:///{DEMO / 'oubli.db'}",
        "subject_key": "demo-subject-key",
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "group_id": "oubli-demo"},
        "identity_system": "orders_db",
        "systems": allsystems.systems_config(sql_urls, recordings_bucket=recordings, s3=S3, vendors=vendors),
        "s3": S3,
        "export": {"bucket": exports},
        "worker": {"http_host": "127.0.0.1", "http_port": 0, "poll_seconds": 0.05},
        "retention": {"rules": allsystems.RETENTION_RULES},
    }, env={})
    kafka.ensure_topics(settings.kafka)
    worker = Worker(settings, migrate=True)
    worker.start()

    common = {"customer_id": subject.customer_id, "emails": [subject.email], "phones": [subject.phone],
              "requested_by": "account-service"}
    export = build_command(kind="export", reason="customer asked for a copy", **common)
    erasure = build_command(kind="erasure", reason="customer deleted account", **common)
    for command in (export, erasure):
        publish_command(settings.kafka, command)
        print(f"submitted {command['kind']:<8} {command['request_id']} for subject {subject.customer_id}")

    pending = {export["request_id"]: export["kind"], erasure["request_id"]: erasure["kind"]}
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 180
    try:
        while pending and time.monotonic() < deadline:
            worker.run_once()
            for request_id, kind in list(pending.items()):
                receipt = worker.store.receipt(request_id) if _known(worker, request_id) else None
                if receipt is None:
                    continue
                progress = " ".join(f"{s['system']}={s['state']}" for s in receipt["systems"])
                line = f"{receipt['status']}: {progress}"
                if seen.get(request_id) != line:
                    seen[request_id] = line
                    print(f"  {kind:<8} {line}")
                if receipt["status"] in ("completed", "rejected"):
                    del pending[request_id]
        for _ in range(40):  # let the outbox relay publish the last receipts
            worker.run_once()
    finally:
        worker.close()
        vendors.stop()

    ok = True
    for command in (export, erasure):
        receipt = read_receipt(settings.kafka, command["request_id"])
        print(f"\n$ oubli receipt {command['request_id']}")
        print(format_receipt(receipt) if receipt else "no receipt")
        ok = ok and receipt is not None and receipt["status"] == "completed"
    # What the retention rules would erase in the sample data today: counts only, nothing published.
    print(f"\n$ oubli sweep --dry-run\n{format_sweep(retention.sweep(settings, as_of=utcnow(), dry_run=True))}")
    print(f"\nworker logs (JSON, redacted): {DEMO / 'worker.log'}")
    return 0 if ok else 1


def _known(worker: Worker, request_id: str) -> bool:
    from worker.store.repository import NotFound

    try:
        worker.store.get(request_id)
    except NotFound:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
