"""Exports end to end (receipt, presigned package), and per-subject order."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from devkit import fakes
from devkit.pipeline import Receipts, subject_command
from devkit.pipeline import export_worker as running_export_worker
from worker.app import Worker
from worker.store.schema import audit_events, tasks
from worker.support import publish_command


def _alpha_and_beta(pg_url: str, kafka_bootstrap: str, s3_bucket: str,
                    **beta: Any) -> Iterator[tuple[Worker, Receipts, Any]]:
    """A worker with two fake systems: alpha plain, beta with ``beta``'s settings."""
    systems = {
        "alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}},
        "beta": {"connector": "devkit.fakes", "settings": {"url": pg_url, **beta}},
    }
    with running_export_worker(systems, store_url=pg_url, bootstrap=kafka_bootstrap, bucket=s3_bucket) as running:
        yield running


@pytest.fixture
def export_worker(pg_url: str, kafka_bootstrap: str, s3_bucket: str) -> Iterator[tuple[Worker, Receipts, Any]]:
    yield from _alpha_and_beta(pg_url, kafka_bootstrap, s3_bucket, polls=3)


def test_export_completes_with_a_presigned_package_whose_sha256_matches(export_worker: Any) -> None:
    worker, receipts, settings = export_worker
    command = subject_command("export")
    publish_command(settings.kafka, command)
    done = receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)

    export = done["export"]
    assert export is not None and export["object_key"].endswith(".zip")
    assert [s["system"] for s in done["systems"]] == ["alpha", "beta"]  # the package step stays hidden
    with urllib.request.urlopen(export["url"], timeout=10) as response:  # noqa: S310 - our presigned URL
        package = response.read()
    assert hashlib.sha256(package).hexdigest() == export["sha256"]
    assert len(package) == export["size_bytes"]
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert "manifest.json" in names
    assert any(name.endswith("alpha.json") for name in names)


def test_an_export_submitted_before_an_erasure_finishes_before_the_erasure_touches_anything(
    export_worker: Any, pg_url: str,
) -> None:
    worker, receipts, settings = export_worker
    export = subject_command("export", customer_id="C-order-1")
    erasure = subject_command("erasure", customer_id="C-order-1")
    publish_command(settings.kafka, export)
    publish_command(settings.kafka, erasure)
    receipts.wait(erasure["request_id"], {"completed"}, step=worker.run_once)
    assert receipts.latest(export["request_id"])["status"] == "completed"

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(fakes.effects.c.id, fakes.effects.c.request_id).order_by(fakes.effects.c.id))
        order = [row.request_id for row in rows]
    engine.dispose()
    last_export = max(i for i, r in enumerate(order) if r == export["request_id"])
    first_erasure = min(i for i, r in enumerate(order) if r == erasure["request_id"])
    assert last_export < first_erasure
    _, _, audit = worker.store.get(erasure["request_id"])
    first_claim = min(e["at"] for e in audit if e["action"] == "claimed")
    export_request, _, _ = worker.store.get(export["request_id"])
    assert first_claim >= export_request["completed_at"]


@pytest.fixture
def slow_sibling_worker(pg_url: str, kafka_bootstrap: str, s3_bucket: str) -> Iterator[tuple[Worker, Receipts, Any]]:
    yield from _alpha_and_beta(pg_url, kafka_bootstrap, s3_bucket, transient_failures=4)


def test_staged_files_lost_while_another_system_retries_are_exported_again_never_completed_without_them(
    slow_sibling_worker: Any, s3_client: Any, s3_bucket: str,
) -> None:
    """alpha stages its file and confirms; beta keeps the package waiting while it retries; meanwhile the store
    loses alpha's staging (an expiry, an S3 that restarted empty). No `completed` may come without alpha's file:
    alpha exports again, and the package holds it."""
    worker, receipts, settings = slow_sibling_worker
    command = subject_command("export")
    request_id = command["request_id"]
    publish_command(settings.kafka, command)

    def state(system: str) -> str | None:
        with worker.engine.connect() as conn:
            return conn.execute(sa.select(tasks.c.state).where(tasks.c.request_id == request_id,
                                                               tasks.c.system == system)).scalar_one_or_none()

    deadline = time.monotonic() + 30
    while state("alpha") != "confirmed":
        assert time.monotonic() < deadline, "alpha never confirmed"
        worker.run_once()
    assert (receipts.latest(request_id) or {}).get("status") != "completed"
    listed = s3_client.list_object_versions(Bucket=s3_bucket)
    lost = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in listed.get("Versions", [])
            if f"staging/{request_id}/alpha" in v["Key"]]
    assert any("/alpha/" in item["Key"] for item in lost)
    s3_client.delete_objects(Bucket=s3_bucket, Delete={"Objects": lost})

    done = receipts.wait(request_id, {"completed", "action_required"}, step=worker.run_once)
    assert done["status"] == "completed"
    with urllib.request.urlopen(done["export"]["url"], timeout=10) as response:  # noqa: S310 - our presigned URL
        names = zipfile.ZipFile(io.BytesIO(response.read())).namelist()
    assert "alpha/alpha.json" in names and "beta/beta.json" in names
    with worker.engine.connect() as conn:
        redone = conn.execute(sa.select(audit_events.c.system).where(
            audit_events.c.request_id == request_id, audit_events.c.error_code == "export_staging_lost",
            audit_events.c.action == "staginglost")).scalars().all()
    assert redone == ["alpha"]


@pytest.mark.parametrize("request_id", ["réq-é/1", "_req#1?x=2", "a" * 128])
def test_an_export_under_any_valid_request_id_completes(export_worker: Any, request_id: str) -> None:
    """command.v1 lets a request id hold any printable character but whitespace; the object keys were built from
    the id as it came and refused one outside [A-Za-z0-9._:-], so such an export failed at every system with
    export_bad_name, and stayed action_required for good (nothing an operator could retry would change the id)."""
    worker, receipts, settings = export_worker
    command = subject_command("export", request_id=request_id)
    publish_command(settings.kafka, command)
    done = receipts.wait(request_id, {"completed", "action_required"}, step=worker.run_once)
    assert done["status"] == "completed", done
    with urllib.request.urlopen(done["export"]["url"], timeout=10) as response:  # noqa: S310 - our presigned URL
        assert hashlib.sha256(response.read()).hexdigest() == done["export"]["sha256"]
