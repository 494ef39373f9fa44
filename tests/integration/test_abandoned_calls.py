"""A call abandoned at its deadline still runs at the system: it keeps counting against the system's
``concurrency`` until it returns, so a hung system is never handed more calls than its limit allows."""

from __future__ import annotations

import time

import sqlalchemy as sa

from devkit import fakes
from devkit.pipeline import Receipts, raw_settings, settings_from, subject_command
from worker.app import Worker
from worker.support import publish_command


def _peak_overlap(pg_url: str, system: str) -> int:
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        calls = conn.execute(sa.select(fakes.call_times.c.started_at, fakes.call_times.c.ended_at)
                             .where(fakes.call_times.c.system == system)).all()
    engine.dispose()
    edges = sorted([(start, 1) for start, _ in calls] + [(end, -1) for _, end in calls])
    peak = running = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_an_abandoned_call_still_holds_its_systems_concurrency(pg_url: str, kafka_bootstrap: str) -> None:
    system = f"hung{int(time.time() * 1000) % 10**8}"
    systems = {system: {"connector": "devkit.fakes", "concurrency": 1,
                        "settings": {"url": pg_url, "delay_seconds": 2.5, "record_calls": True}}}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["worker"]["call_timeout_seconds"] = 1
    settings = settings_from(raw)
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.executor.deadline_every = 0.1  # look at the deadline often, so that abandonment is prompt
    worker.start()
    receipts = Receipts(settings)
    try:
        commands = [subject_command() for _ in range(3)]
        for command in commands:
            publish_command(settings.kafka, command)
        receipts.wait(commands[0]["request_id"], {"in_progress"}, step=worker.run_once, timeout=60)
        deadline = time.monotonic() + 4  # each call outlives its 1 s deadline: several are abandoned
        while time.monotonic() < deadline:
            worker.run_once()
    finally:
        receipts.close()
        worker.close()
    time.sleep(3)  # the abandoned calls return (and write down their times) in their own threads
    assert _peak_overlap(pg_url, system) == 1, "a system with concurrency 1 had calls running at once"
