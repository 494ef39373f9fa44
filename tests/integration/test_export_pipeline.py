"""Exports end to end (receipt, presigned package), and per-subject order."""

from __future__ import annotations

import hashlib
import io
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
from worker.support import publish_command


@pytest.fixture
def export_worker(pg_url: str, kafka_bootstrap: str, s3_bucket: str) -> Iterator[tuple[Worker, Receipts, Any]]:
    systems = {
        "alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}},
        "beta": {"connector": "devkit.fakes", "settings": {"url": pg_url, "polls": 3}},
    }
    with running_export_worker(systems, store_url=pg_url, bootstrap=kafka_bootstrap, bucket=s3_bucket) as running:
        yield running


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
