"""Throughput: commands per second from publish to ``completed`` receipt, for a burst of erasures.

Each run: fresh Kafka topics and consumer group, a fresh store, ``oubli worker`` subprocess(es)
started and warmed up with one request, then N erasures over three fake systems (``devkit.fakes``,
no delay, concurrency 8) published at once. The clock runs from the first publish to the moment
the client reads the last ``completed`` receipt. The fakes log their effects to a fresh PostgreSQL
schema in every configuration, so that only the store differs between:

- ``sqlite``: the SQLite store (WAL, synchronous=FULL), one worker (SQLite is single-worker only);
- ``pg``: the PostgreSQL store, one worker;
- ``pg-2w``: the PostgreSQL store, two workers in one consumer group.

The configurations are interleaved within each repetition (sqlite, pg, pg-2w, sqlite, …), so the
machine's noise falls on all of them alike; the medians of the repetitions are reported.

Usage: .venv/bin/python bench/throughput.py [--commands 300] [--repeats 3] [--configs sqlite,pg,pg-2w]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    KAFKA,
    Publisher,
    ReceiptWatch,
    WorkerProcess,
    fake_system,
    fakes,
    median,
    pg_schema,
    raw_settings,
    require_stack,
    settings_from,
    start_workers,
    stop_workers,
    store_url,
    subject_command,
    wait_assigned,
)

from worker.store import db
from worker.store.schema import requests

CONFIGS = {"sqlite": ("sqlite", 1), "pg": ("pg", 1), "pg-2w": ("pg", 2)}
SYSTEMS = ("alpha", "beta", "gamma")
RUN_TIMEOUT = 240.0


def one_run(name: str, n: int, directory: Path) -> dict[str, Any]:
    kind, workers_count = CONFIGS[name]
    with pg_schema("bench_fakes") as fakes_url, store_url(kind, directory) as url:
        engine = db.create_engine(url)
        db.migrate(engine)
        fake_engine = sa.create_engine(fakes_url, poolclass=sa.pool.NullPool)
        fakes.metadata.create_all(fake_engine)  # before the workers start: two would race to create it
        fake_engine.dispose()
        systems = {sid: fake_system(fakes_url, concurrency=8) for sid in SYSTEMS}
        raw = raw_settings(store_url=url, bootstrap=KAFKA, systems=systems)
        settings = settings_from(raw)
        watch = ReceiptWatch(settings)
        publisher = Publisher(settings)
        workers = start_workers(raw, directory, workers_count, f"{name}-")
        try:
            wait_assigned(workers)
            warm = subject_command()
            publisher.publish([warm])
            if not watch.wait_completed([warm["request_id"]], 60):
                sys.exit(f"{name}: the warm-up request did not complete within 60 s")
            commands = [subject_command() for _ in range(n)]
            ids = [c["request_id"] for c in commands]
            cpu_before = [cpu_seconds(w) for w in workers]
            started = publisher.publish(commands)
            published = time.monotonic() - started
            complete = watch.wait_completed(ids, RUN_TIMEOUT)
            done = [watch.completed_seen[i] for i in ids if i in watch.completed_seen]
            elapsed = (max(done) if complete else time.monotonic()) - started
            cpu = [cpu_seconds(w) - before for w, before in zip(workers, cpu_before, strict=True)]
            with engine.connect() as conn:
                row = conn.execute(sa.select(
                    sa.func.min(requests.c.created_at), sa.func.max(requests.c.created_at),
                    sa.func.max(requests.c.completed_at),
                ).where(requests.c.request_id.in_(ids))).one()
            fake_engine = sa.create_engine(fakes_url, poolclass=sa.pool.NullPool)
            with fake_engine.connect() as conn:
                effects = fakes.effects
                applied = conn.execute(sa.select(sa.func.count()).select_from(effects).where(
                    effects.c.action == "erase", effects.c.request_id.in_(ids))).scalar_one()
                pairs = conn.execute(sa.select(sa.func.count()).select_from(
                    sa.select(effects.c.request_id, effects.c.system).distinct()
                    .where(effects.c.action == "erase", effects.c.request_id.in_(ids)).subquery())).scalar_one()
            fake_engine.dispose()
        finally:
            stop_workers(workers)
            watch.close()
            engine.dispose()
    intake = (row[1] - row[0]).total_seconds() if row[0] else float("nan")
    return {"config": name, "completed": len(done), "elapsed": elapsed, "rate": len(done) / elapsed,
            "publish": published, "intake_rate": n / intake if intake else float("nan"),
            "store_span": (row[2] - row[0]).total_seconds() if row[2] else float("nan"),
            "effects": applied, "double": applied - pairs,
            "cpu": sum(cpu) / (time.monotonic() - started)}


def cpu_seconds(worker: WorkerProcess) -> float:
    """User + system CPU time of a worker process so far, from /proc (Linux)."""
    assert worker.process is not None
    fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=300, help="erasures per run (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every configuration (default 3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    args = parser.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(names) - CONFIGS.keys())
    if unknown:
        sys.exit(f"unknown configs: {', '.join(unknown)}")
    require_stack()
    print(f"oubli throughput benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"python {platform.python_version()}")
    print(f"{args.commands} erasures x {len(SYSTEMS)} fake systems per run, {args.repeats} repetitions, "
          f"configs interleaved: {', '.join(names)}\n")
    began = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="oubli-bench-") as tmp:
        for rep in range(args.repeats):
            for name in names:
                result = one_run(name, args.commands, Path(tmp))
                results[name].append(result)
                flag = "" if result["completed"] == args.commands else f"  INCOMPLETE after {RUN_TIMEOUT:.0f}s"
                print(f"  rep {rep + 1} {name:7} {result['rate']:7.1f} commands/s  ({result['completed']} in "
                      f"{result['elapsed']:.1f}s; publish {result['publish']:.2f}s; intake "
                      f"{result['intake_rate']:.0f}/s; erasures applied {result['effects']}, "
                      f"twice {result['double']}; worker CPU {result['cpu']:.0%} of a core){flag}", flush=True)
    print(f"\n  {'config':7} {'median commands/s':>17} {'min':>7} {'max':>7} {'vs sqlite':>9} {'vs pg':>6}"
          f" {'median intake/s':>15} {'worker CPU':>10}")
    medians = {name: median([r["rate"] for r in rs]) for name, rs in results.items()}
    for name, rs in results.items():
        rates = [r["rate"] for r in rs]
        vs_sqlite = f"{medians[name] / medians['sqlite']:.2f}" if "sqlite" in medians else "-"
        vs_pg = f"{medians[name] / medians['pg']:.2f}" if "pg" in medians else "-"
        print(f"  {name:7} {medians[name]:17.1f} {min(rates):7.1f} {max(rates):7.1f} {vs_sqlite:>9} {vs_pg:>6}"
              f" {median([r['intake_rate'] for r in rs]):15.0f} {median([r['cpu'] for r in rs]):10.0%}")
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\ntotal {time.monotonic() - began:.0f}s; this process's own CPU {own.ru_utime + own.ru_stime:.0f}s")


if __name__ == "__main__":
    main()
