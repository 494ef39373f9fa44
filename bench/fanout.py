"""Fan-out is concurrent, and per-system concurrency limits hold.

Ten fake systems (``devkit.fakes`` with ``delay_seconds`` 0.05, 0.10 … 0.50 s and ``record_calls``)
behind ``oubli worker`` processes on a fresh PostgreSQL schema and fresh Kafka topics.

1. sequential: N erasures, one at a time (the next is published once the previous one's
   ``completed`` receipt is read). Per request: accepted -> completed from the store
   (``requests.created_at`` -> ``completed_at``), publish -> completed receipt as seen by a client,
   and how many of the request's calls overlapped. Compared with the slowest delay and the sum.
2. burst: B erasures published at once, per-system ``concurrency`` limits 1…4. From the calls'
   start/end times: the most calls in flight at once per system (must be <= its limit), and the
   burst's makespan against its lower bound max(B * delay / limit).
3. burst with two worker processes on one store (``--workers2``, on by default): the same figures.

Usage: .venv/bin/python bench/fanout.py [--requests 20] [--burst 50] [--no-workers2]
"""

from __future__ import annotations

import argparse
import datetime as dt
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
    fake_system,
    fakes,
    fmt,
    max_overlap,
    median,
    pg_schema,
    raw_settings,
    require_stack,
    settings_from,
    start_workers,
    stop_workers,
    subject_command,
    wait_assigned,
)

from worker.store import db
from worker.store.schema import requests

DELAYS = [round(0.05 * (i + 1), 2) for i in range(10)]
LIMITS = [1, 1, 2, 2, 2, 3, 3, 4, 4, 4]  # chosen so that every system needs about the same time per burst
SEQUENTIAL_LIMIT = 4


def system_ids() -> list[str]:
    return [f"s{i + 1:02d}" for i in range(len(DELAYS))]


def make_raw(url: str, limits: list[int]) -> dict[str, Any]:
    systems = {sid: fake_system(url, concurrency=limit, delay_seconds=delay, record_calls=True)
               for sid, delay, limit in zip(system_ids(), DELAYS, limits, strict=True)}
    # max_in_flight above the sum of the limits, so that only the per-system limits bind.
    return raw_settings(store_url=url, bootstrap=KAFKA, systems=systems,
                        worker={"poll_seconds": 0.05, "lease_seconds": 30, "drain_seconds": 10, "http_port": 0,
                                "http_host": "127.0.0.1", "max_in_flight": 64})


def store_walls(url: str, request_ids: list[str]) -> dict[str, float]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(requests.c.request_id, requests.c.created_at, requests.c.completed_at)
                            .where(requests.c.request_id.in_(request_ids))).all()
    engine.dispose()
    return {r.request_id: (r.completed_at - r.created_at).total_seconds() for r in rows if r.completed_at}


def call_rows(url: str, request_ids: list[str]) -> list[Any]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(fakes.call_times).where(fakes.call_times.c.request_id.in_(request_ids))).all()
    engine.dispose()
    return list(rows)


def effect_duplicates(url: str, request_ids: list[str]) -> int:
    """(request, system) pairs whose erasure was applied more than once (must be 0)."""
    effects = fakes.effects
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(
            sa.select(effects.c.request_id, effects.c.system)
            .where(effects.c.action == "erase", effects.c.request_id.in_(request_ids))
            .group_by(effects.c.request_id, effects.c.system)
            .having(sa.func.count() > 1).subquery())).scalar_one()
    engine.dispose()
    return int(count)


def prepare(url: str) -> None:
    """Migrates the store and creates the fakes' tables before any worker starts (two would race)."""
    engine = db.create_engine(url)
    db.migrate(engine)
    fakes.metadata.create_all(engine)
    engine.dispose()


def warm_up(publisher: Publisher, watch: ReceiptWatch) -> None:
    command = subject_command()
    publisher.publish([command])
    if not watch.wait_completed([command["request_id"]], 60):
        sys.exit("the warm-up request did not complete within 60 s")


def sequential(n: int, directory: Path) -> dict[str, Any]:
    with pg_schema("bench_fanout") as url:
        prepare(url)
        raw = make_raw(url, [SEQUENTIAL_LIMIT] * len(DELAYS))
        settings = settings_from(raw)
        watch = ReceiptWatch(settings)
        publisher = Publisher(settings)
        workers = start_workers(raw, directory, 1, "sequential")
        try:
            wait_assigned(workers)
            warm_up(publisher, watch)
            ids: list[str] = []
            e2e: list[float] = []
            for _ in range(n):
                command = subject_command()
                request_id = command["request_id"]
                published = publisher.publish([command])
                if not watch.wait_completed([request_id], 30):
                    sys.exit(f"{request_id} did not complete within 30 s")
                ids.append(request_id)
                e2e.append(watch.completed_seen[request_id] - published)
            walls = store_walls(url, ids)
            rows = call_rows(url, ids)
            duplicates = effect_duplicates(url, ids)
        finally:
            stop_workers(workers)
            watch.close()
    by_request: dict[str, list[Any]] = {}
    for row in rows:
        by_request.setdefault(row.request_id, []).append(row)
    overlap = [max_overlap((r.started_at, r.ended_at) for r in calls) for calls in by_request.values()]
    span = [max(r.ended_at for r in calls) - min(r.started_at for r in calls) for calls in by_request.values()]
    return {"walls": [walls[i] for i in ids], "e2e": e2e, "overlap": overlap, "span": span,
            "calls": len(rows), "duplicates": duplicates}


def burst(b: int, workers_count: int, directory: Path) -> dict[str, Any]:
    with pg_schema("bench_fanout") as url:
        prepare(url)
        raw = make_raw(url, LIMITS)
        settings = settings_from(raw)
        watch = ReceiptWatch(settings)
        publisher = Publisher(settings)
        workers = start_workers(raw, directory, workers_count, f"burst{workers_count}w")
        try:
            assigned = wait_assigned(workers)
            warm_up(publisher, watch)
            commands = [subject_command() for _ in range(b)]
            ids = [c["request_id"] for c in commands]
            published = publisher.publish(commands)
            if not watch.wait_completed(ids, 180):
                done = len(set(ids) & watch.completed_seen.keys())
                sys.exit(f"burst: only {done}/{b} requests completed within 180 s")
            makespan = max(watch.completed_seen[i] for i in ids) - published
            walls = store_walls(url, ids)
            rows = call_rows(url, ids)
            duplicates = effect_duplicates(url, ids)
        finally:
            stop_workers(workers)
            watch.close()
    per_system: dict[str, list[Any]] = {}
    for row in rows:
        per_system.setdefault(row.system, []).append(row)
    systems = []
    for sid, delay, limit in zip(system_ids(), DELAYS, LIMITS, strict=True):
        calls = per_system.get(sid, [])
        start = min(r.started_at for r in calls)
        end = max(r.ended_at for r in calls)
        busy = sum(r.ended_at - r.started_at for r in calls)
        systems.append({"system": sid, "delay": delay, "limit": limit, "calls": len(calls),
                        "peak": max_overlap((r.started_at, r.ended_at) for r in calls),
                        "bound": b * delay / limit, "active": end - start,
                        "utilisation": busy / (limit * (end - start))})
    return {"makespan": makespan, "walls": list(walls.values()), "systems": systems, "duplicates": duplicates,
            "assigned": assigned, "workers": workers_count}


def print_burst(result: dict[str, Any], b: int) -> None:
    n = result["workers"]
    bound = max(s["bound"] for s in result["systems"])
    print(f"\n== burst: {b} erasures at once, {n} worker process{'es' if n > 1 else ''}, per-system limits ==")
    if not result["assigned"]:
        print("  (warning: not every worker had partitions when the burst started)")
    print(f"  {'system':6} {'delay':>6} {'limit':>5} {'calls':>5} {'peak in flight':>14} {'limit held':>10}"
          f" {'lower bound':>11} {'active':>8} {'utilisation':>11}")
    for s in result["systems"]:
        held = "yes" if s["peak"] <= s["limit"] else f"NO ({s['peak']}>{s['limit']})"
        print(f"  {s['system']:6} {s['delay']:6.2f} {s['limit']:5d} {s['calls']:5d} {s['peak']:14d} {held:>10}"
              f" {s['bound']:10.2f}s {s['active']:7.2f}s {s['utilisation']:10.0%}")
    print(f"  makespan (publish -> last completed receipt): {fmt(result['makespan'])}; lower bound max(B*delay/limit)"
          f" = {fmt(bound)}; ratio {result['makespan'] / bound:.2f}")
    calls = sum(s["calls"] for s in result["systems"])
    # Limits are global (across workers), so more workers do not raise what the systems allow.
    capacity = sum(s["limit"] / s["delay"] for s in result["systems"])
    print(f"  calls/s achieved: {calls / result['makespan']:.1f}; the systems' limits allow"
          f" sum(limit/delay) = {capacity:.0f} calls/s")
    walls = result["walls"]
    print(f"  accepted -> completed per request: median {fmt(median(walls))}, max {fmt(max(walls))}")
    print(f"  erasures applied twice: {result['duplicates']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests (default 20)")
    parser.add_argument("--burst", type=int, default=50, help="requests in the burst (default 50)")
    parser.add_argument("--no-workers2", dest="workers2", action="store_false",
                        help="skip the burst with two worker processes")
    args = parser.parse_args()
    require_stack()
    print(f"oubli fan-out benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"python {platform.python_version()}")
    print(f"systems: {len(DELAYS)} fakes, delays {DELAYS[0]}..{DELAYS[-1]} s; slowest {max(DELAYS):.2f} s,"
          f" sum {sum(DELAYS):.2f} s; store: PostgreSQL; worker: `oubli worker` subprocess")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oubli-bench-") as tmp:
        directory = Path(tmp)
        seq = sequential(args.requests, directory)
        slowest, total = max(DELAYS), sum(DELAYS)
        wall = median(seq["walls"])
        print(f"\n== sequential: {args.requests} erasures, one at a time, limit {SEQUENTIAL_LIMIT} per system ==")
        print(f"  accepted -> completed (store):        median {fmt(wall)}  min {fmt(min(seq['walls']))}"
              f"  max {fmt(max(seq['walls']))}")
        print(f"  publish -> completed receipt (client): median {fmt(median(seq['e2e']))}"
              f"  max {fmt(max(seq['e2e']))}")
        print(f"  first call start -> last call end:     median {fmt(median(seq['span']))}")
        print(f"  slowest system {fmt(slowest)}, sum of systems {fmt(total)}")
        print(f"  ratio wall / slowest = {wall / slowest:.2f};  wall / sum = {wall / total:.2f};"
              f"  orchestration overhead (wall - slowest) = {fmt(wall - slowest)}")
        print(f"  calls of one request in flight at once: median {median(seq['overlap']):.0f} of {len(DELAYS)}"
              f" (min {min(seq['overlap'])}); calls {seq['calls']}; erasures applied twice: {seq['duplicates']}")
        one = burst(args.burst, 1, directory)
        print_burst(one, args.burst)
        if args.workers2:
            two = burst(args.burst, 2, directory)
            print_burst(two, args.burst)
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\ntotal {time.monotonic() - began:.0f}s; this process's own CPU {own.ru_utime + own.ru_stime:.0f}s")


if __name__ == "__main__":
    main()
