"""What one vendor-limit ``admit`` costs: this process's registry against the store-backed limits.

The vendors' limits must hold across every worker, so the worker keeps them in
the store (``worker.store.ratelimits.StoreLimits``): one short transaction per admit. This script
times single admits, one after the other, on a fake clock (no sleeping), for:

- ``process``: ``connectors.ratelimit.Registry``, the in-process limits;
- ``sqlite``: ``StoreLimits`` on a SQLite file with the worker's pragmas (WAL, synchronous=FULL);
- ``postgresql``: ``StoreLimits`` on a fresh PostgreSQL schema (dropped afterwards).

Cases:
- ``admitted, 1 rate``: a generous rate (Nosto, Shopimind, Facebook: one name);
- ``admitted, 1 rate + 2 quotas``: Google Analytics' shape (a property rate, property and project
  daily quotas);
- ``refused by the rate``: an exhausted rate (the throttled path, which rolls back);
- ``contended``: ``--workers`` engines × ``--threads`` threads admitting on one name at once; the
  median is per admit as each caller sees it, and the total rate is admits/s for all of them.

It also counts the SQL statements and transactions of one admit. Usage:

    .venv/bin/python bench/ratelimit.py [--n 2000] [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import PG_URL, pg_schema

from connectors.ratelimit import Registry
from worker.core.limits import Buckets, Limits, Quotas, QuotaSpec, RateSpec
from worker.store import db
from worker.store.ratelimits import StoreLimits
from worker.store.schema import metadata, rate_buckets, rate_quotas

T0 = dt.datetime(2027, 1, 15, 9, 0, tzinfo=dt.UTC)
GENEROUS = RateSpec(1e6, 1e6)
CASES: dict[str, tuple[Buckets, Quotas]] = {
    "admitted, 1 rate": ([("nosto:default", GENEROUS)], []),
    "admitted, 1 rate + 2 quotas": ([("ga:property:1", GENEROUS)],
                                    [("ga:property:1", QuotaSpec(10**9, "America/Los_Angeles")),
                                     ("ga:project:p", QuotaSpec(10**9, "America/Los_Angeles"))]),
    "refused by the rate": ([("slow:default", RateSpec(1e-6, 1))], []),
}


class Counter:
    """SQL statements and commits on an engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements = self.commits = 0
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "rollback", self._commit)

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _commit(self, *_args: Any) -> None:
        self.commits += 1


def timed(admit: Callable[[dt.datetime], object], n: int, start: int = 0) -> list[float]:
    samples = []
    for i in range(start, start + n):
        now = T0 + dt.timedelta(milliseconds=i)
        began = time.perf_counter()
        admit(now)
        samples.append(time.perf_counter() - began)
    return samples


def run_cases(name: str, make: Callable[[], tuple[Limits, Counter | None]], n: int, workers: int,
              threads: int) -> dict[str, str]:
    row: dict[str, str] = {}
    limits, counter = make()
    for case, (buckets, quotas) in CASES.items():
        timed(lambda now, b=buckets, q=quotas: limits.admit(b, q, now), 50)  # warm up: connect, plan
        before = (counter.statements, counter.commits) if counter else (0, 0)
        samples = timed(lambda now, b=buckets, q=quotas: limits.admit(b, q, now), n, 50)
        sql = (f", {(counter.statements - before[0]) / n:.1f} stmt/{(counter.commits - before[1]) / n:.1f} txn"
               if counter else "")
        row[case] = f"{1000 * statistics.median(samples):.3f} ms (p95 {1000 * quantile(samples, 0.95):.3f}{sql})"
    callers = [make()[0] for _ in range(workers)] if name != "process" else [limits] * workers
    per_admit: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(workers * threads)

    def caller(each: Limits, offset: int) -> None:
        barrier.wait()
        samples = timed(lambda now: each.admit([("shared:key", GENEROUS)], [], now), n // threads, offset)
        with lock:
            per_admit.extend(samples)

    pool = [threading.Thread(target=caller, args=(each, k * n)) for each in callers for k in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - began
    row["contended"] = (f"{1000 * statistics.median(per_admit):.3f} ms (p95 {1000 * quantile(per_admit, 0.95):.3f}), "
                        f"{len(per_admit) / wall:,.0f} admits/s in all")
    return row


def quantile(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="admits per case (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="engines in the contended case (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per engine in the contended case")
    args = parser.parse_args()
    engines: list[sa.Engine] = []

    def store(url: str) -> Callable[[], tuple[Limits, Counter | None]]:
        def make() -> tuple[Limits, Counter | None]:
            engine = db.create_engine(url)
            engines.append(engine)
            metadata.create_all(engine, tables=[rate_buckets, rate_quotas])
            return StoreLimits(engine), Counter(engine)
        return make

    print(f"# bench/ratelimit.py, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, n={args.n}, "
          f"contended: {args.workers} workers x {args.threads} threads; PostgreSQL at {PG_URL.split('@')[-1]}")
    rows: dict[str, dict[str, str]] = {}
    rows["process"] = run_cases("process", lambda: (Registry(), None), args.n, args.workers, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows["sqlite"] = run_cases("sqlite", store(f"sqlite:///{Path(tmp) / 'limits.db'}"), args.n,
                                   args.workers, args.threads)
        for engine in engines:
            engine.dispose()
    with pg_schema("bench_rl") as url:
        rows["postgresql"] = run_cases("postgresql", store(url), args.n, args.workers, args.threads)
        for engine in engines:
            engine.dispose()
    cases = [*CASES, "contended"]
    print("\n| median per admit | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for case in cases:
        print(f"| {case} | " + " | ".join(rows[name][case] for name in rows) + " |")


if __name__ == "__main__":
    main()
