"""Under SIGKILL: a worker killed at any point loses nothing, and the
request completes once, with one terminal receipt, after a restart. Nothing personal is left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devkit import fakes
from devkit.pipeline import (
    Receipts,
    WorkerProcess,
    iter_tables,
    personal_strings,
    raw_settings,
    settings_from,
    subject_command,
)
from worker import failpoints
from worker.support import publish_command


@pytest.mark.parametrize("failpoint", sorted(failpoints.ALL))
def test_sigkill_at_any_point_loses_nothing_and_completes_once(
    failpoint: str, pg_url: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    systems = {name: {"connector": "devkit.fakes", "settings": {"url": pg_url, **extra}}
               for name, extra in {"alpha": {}, "beta": {"polls": 1}}.items()}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    settings = settings_from(raw)
    receipts = Receipts(settings)
    command = subject_command(identifiers={"ga_client_id": ["555.777"]})
    request_id = command["request_id"]

    doomed = WorkerProcess({**raw, "failpoints": [failpoint]}, tmp_path, "doomed").start()
    publish_command(settings.kafka, command)
    assert doomed.wait_exit(90) == -9, doomed.logs()[-2000:]

    survivor = WorkerProcess(raw, tmp_path, "survivor").start()
    try:
        done = receipts.wait(request_id, {"completed"}, timeout=90)
        # After a kill past the publish, the completed receipt is out before the survivor has even
        # started: let it start, and republish what the doomed one left in the outbox, before SIGTERM.
        survivor.wait_logged("worker_started")
        _wait_for_empty_outbox(pg_url)
        receipts.drain(2.0)
    finally:
        assert survivor.terminate() == 0, survivor.logs()[-2000:]
        receipts.close()

    assert {s["system"]: s["state"] for s in done["systems"]} == {"alpha": "confirmed", "beta": "confirmed"}
    terminal = {json.dumps(r, sort_keys=True) for r in receipts.of(request_id) if r["status"] == "completed"}
    assert len(terminal) == 1, "two different terminal receipts"
    assert fakes.effect_count(pg_url, request_id, "erase", "alpha") >= 1

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM requests WHERE request_id = :r"), {"r": request_id})
        assert rows.scalar_one() == 1
    _assert_nothing_personal(command, engine, [doomed.logs(), survivor.logs()], receipts.raw)
    engine.dispose()


def _wait_for_empty_outbox(store_url: str, timeout: float = 60) -> None:
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one() == 0:
                    return
            assert time.monotonic() < deadline, "the survivor did not publish what was left in the outbox"
            time.sleep(0.2)
    finally:
        engine.dispose()


def _assert_nothing_personal(command: dict[str, Any], engine: Any, logs: list[str], receipts: list[bytes]) -> None:
    """The orchestrator forgets: no email, phone, customer id or vendor id in logs, receipts or our tables."""
    personal = personal_strings(command)
    assert personal
    for text in logs:
        assert text, "the worker wrote no logs at all"
        for value in personal:
            assert value not in text, "personal data in the worker's logs"
    for record in receipts:
        for value in personal:
            assert value.encode() not in record, "personal data in a receipt"
    for table, rows in iter_tables(engine):
        dump = repr(rows)
        for value in personal:
            assert value not in dump, f"personal data left in table {table}"


def test_sigkill_in_a_batch_loses_nothing_and_keeps_each_subjects_order(
    pg_url: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    """The batched path: a burst already waiting is consumed and recorded in one transaction, and the worker
    dies before the offsets are stored; the survivor gets it all again, claims and finishes it as sets."""
    failpoint = failpoints.AFTER_RECORD
    systems = {name: {"connector": "devkit.fakes", "settings": {"url": pg_url}} for name in ("alpha", "beta")}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    settings = settings_from(raw)
    receipts = Receipts(settings)
    commands = [subject_command() for _ in range(6)]
    commands.append(subject_command(customer_id=commands[0]["subject"]["customer_id"]))  # the same subject, later
    for command in commands:  # all waiting before the worker starts: its first consume takes them together
        publish_command(settings.kafka, command)

    doomed = WorkerProcess({**raw, "failpoints": [failpoint]}, tmp_path, "doomed").start()
    assert doomed.wait_exit(90) == -9, doomed.logs()[-2000:]
    survivor = WorkerProcess(raw, tmp_path, "survivor").start()
    try:
        for command in commands:
            receipts.wait(command["request_id"], {"completed"}, timeout=90)
        survivor.wait_logged("worker_started")
        _wait_for_empty_outbox(pg_url)
        receipts.drain(2.0)
    finally:
        assert survivor.terminate() == 0, survivor.logs()[-2000:]
        receipts.close()

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        for command in commands:
            request_id = command["request_id"]
            terminal = {json.dumps(r, sort_keys=True) for r in receipts.of(request_id) if r["status"] == "completed"}
            assert len(terminal) == 1, "two different terminal receipts"
            assert "accepted" in {r["status"] for r in receipts.of(request_id)}
            assert conn.execute(sa.text("SELECT count(*) FROM requests WHERE request_id = :r"),
                                {"r": request_id}).scalar_one() == 1
            for system in ("alpha", "beta"):
                assert fakes.effect_count(pg_url, request_id, "erase", system) >= 1
        # The subject's later request started only once its earlier one had completed.
        first, later = commands[0]["request_id"], commands[-1]["request_id"]
        first_done = conn.execute(sa.text("SELECT completed_at FROM requests WHERE request_id = :r"),
                                  {"r": first}).scalar_one()
        later_claims = conn.execute(sa.text("SELECT min(at) FROM audit_events WHERE request_id = :r "
                                            "AND action = 'claimed'"), {"r": later}).scalar_one()
        assert later_claims >= first_done
    engine.dispose()
