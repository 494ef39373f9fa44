"""Where the worker's main loop spends its time during a burst (explains bench/throughput.py).

Runs one ``Worker`` in this process (PostgreSQL and SQLite stores, fresh schema/file and topics),
publishes N erasures over three fake systems (no delay), and drives ``run_once`` until all are
completed, timing each step of the loop by wrapping the worker's own methods. Nothing in
``worker/`` is changed; the wrappers add well under 1 % to the loop.

Usage: .venv/bin/python bench/loop_profile.py [--commands 200] [--stores pg,sqlite]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from _common import (
    KAFKA,
    Publisher,
    fake_system,
    fakes,
    pg_schema,
    raw_settings,
    require_stack,
    settings_from,
    store_url,
    subject_command,
)

from worker.app import Worker
from worker.store.schema import requests

# (label, object attribute path) of the steps to time, outermost first.
STEPS = [
    ("loop: _consume_one (poll + intake)", "_consume_one"),
    ("  intake txn (1 per command)", "intake.handle"),
    ("loop: executor tick: harvest", "executor._harvest"),
    ("  store.finish_many txn (1 per harvest)", "store.finish_many"),
    ("loop: executor tick: launch", "executor._launch"),
    ("  store.claim_due (query + claims)", "store.claim_due"),
    ("    store._claim txn (1 per call)", "store._claim"),
    ("loop: relay tick", "relay.tick"),
    ("  outbox batch + delete", "store.outbox.batch"),
    ("loop: offset commit (sync)", "_commit"),
]


def wrap(owner: Any, name: str, label: str, totals: collections.Counter[str], counts: collections.Counter[str]) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - began
            counts[label] += 1

    setattr(owner, name, timed)


def profile(kind: str, n: int, directory: Path) -> None:
    with pg_schema("bench_prof_fakes") as fakes_url, store_url(kind, directory) as url:
        engine = sa.create_engine(fakes_url, poolclass=sa.pool.NullPool)
        fakes.metadata.create_all(engine)
        engine.dispose()
        raw = raw_settings(store_url=url, bootstrap=KAFKA,
                           systems={s: fake_system(fakes_url, concurrency=8) for s in ("alpha", "beta", "gamma")})
        settings = settings_from(raw)
        worker = Worker(settings, migrate=True, serve_http=False)
        worker.start()
        try:
            deadline = time.monotonic() + 30
            while not worker.assigned and time.monotonic() < deadline:
                worker.run_once()
            totals: collections.Counter[str] = collections.Counter()
            counts: collections.Counter[str] = collections.Counter()
            for label, path in STEPS:
                *parents, name = path.split(".")
                owner: Any = worker
                for parent in parents:
                    owner = getattr(owner, parent)
                wrap(owner, name, label, totals, counts)
            wrap(worker.store.outbox, "delete", STEPS[8][0], totals, counts)
            sql: collections.Counter[str] = collections.Counter()
            sa.event.listen(worker.engine, "before_cursor_execute", lambda *_a, **_k: sql.update(["statements"]))
            sa.event.listen(worker.engine, "commit", lambda *_a: sql.update(["commits"]))
            commands = [subject_command() for _ in range(n)]
            ids = [c["request_id"] for c in commands]
            Publisher(settings).publish(commands)
            began, loops, done = time.monotonic(), 0, 0
            query = sa.select(sa.func.count()).where(requests.c.request_id.in_(ids), requests.c.status == "completed")
            while done < n and time.monotonic() - began < 300:
                worker.run_once()
                loops += 1
                if loops % 25 == 0:
                    with worker.engine.connect() as conn:
                        done = conn.execute(query).scalar_one()
            elapsed = time.monotonic() - began
        finally:
            worker.close()
    print(f"\n== {kind}: {done}/{n} erasures x 3 systems completed in {elapsed:.1f}s = {done / elapsed:.1f}/s;"
          f" {loops} loops, {elapsed / loops * 1000:.1f} ms per loop ==")
    print(f"  store round trips: {sql['statements'] / max(done, 1):.1f} SQL statements and"
          f" {sql['commits'] / max(done, 1):.1f} commits per command (whole loop, incl. empty polls)")
    print(f"  {'step':36} {'total':>7} {'share':>6} {'calls':>6} {'ms each':>8} {'ms per command':>14}")
    for label, _ in STEPS:
        if counts[label]:
            print(f"  {label:36} {totals[label]:6.2f}s {totals[label] / elapsed:6.0%} {counts[label]:6d}"
                  f" {totals[label] / counts[label] * 1000:8.2f} {totals[label] / max(done, 1) * 1000:14.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--stores", default="pg,sqlite")
    args = parser.parse_args()
    require_stack()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"oubli main-loop profile, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="oubli-bench-") as tmp:
        for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
            profile(kind, args.commands, Path(tmp))


if __name__ == "__main__":
    main()
