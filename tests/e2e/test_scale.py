"""Several workers in one group share the load; rebalances lose nothing and never
run a system twice for one request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from devkit import fakes
from devkit.pipeline import Receipts, WorkerProcess, raw_settings, settings_from, subject_command
from worker.support import publish_command

REQUESTS = 40


def test_workers_share_the_load_through_rebalances_without_running_anything_twice(
    pg_url: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    systems = {name: {"connector": "devkit.fakes", "concurrency": 2, "settings": {"url": pg_url}}
               for name in ("alpha", "beta", "gamma")}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    settings = settings_from(raw)
    receipts = Receipts(settings)
    first = WorkerProcess(raw, tmp_path, "first").start()
    second = WorkerProcess(raw, tmp_path, "second").start()
    third = WorkerProcess(raw, tmp_path, "third")
    commands = [subject_command() for _ in range(REQUESTS)]
    try:
        for command in commands[: REQUESTS // 2]:
            publish_command(settings.kafka, command)
        receipts.wait(commands[0]["request_id"], {"completed"}, timeout=60)
        third.start()  # a rebalance while work is in flight
        for command in commands[REQUESTS // 2:]:
            publish_command(settings.kafka, command)
        time.sleep(1.0)
        assert first.terminate() == 0, first.logs()[-2000:]  # and another: graceful drain of a leaver
        for command in commands:
            receipts.wait(command["request_id"], {"completed"}, timeout=90)
        receipts.drain(1.0)
    finally:
        for worker in (second, third):
            worker.terminate()
        receipts.close()

    for command in commands:
        request_id = command["request_id"]
        for system in systems:
            assert fakes.effect_count(pg_url, request_id, "erase_call", system) == 1, (request_id, system)
        terminal = {json.dumps(r, sort_keys=True) for r in receipts.of(request_id) if r["status"] == "completed"}
        assert len(terminal) == 1
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        actors = conn.execute(sa.text("SELECT DISTINCT actor FROM audit_events WHERE action = 'claimed'")).scalars()
        assert len(set(actors)) >= 2, "one worker did all the work"
        assert conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one() == REQUESTS
    engine.dispose()
