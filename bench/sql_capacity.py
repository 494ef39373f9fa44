"""SQL capacity: erasures per second through one worker whose one system is the declarative ``sql`` connector.

The system ``shop`` is a PostgreSQL shop database (a fresh schema on the durable cluster, next to the
store's) with ``--customers`` customers. Its rule matches ``customers`` by email and anonymises the row:
first_name, last_name, phone and address become NULL, and so does email, since the connector refuses a
rule whose anonymised rows keep their match column (id and created_at stay). Each command of a burst of
``--requests`` erases a different existing customer, by the email in lower case (the stored one has
capitals, so the connector's normalised match is exercised, through its expression index).

Timed from the first publish until this client has read every ``completed`` receipt. Reported like
bench/capacity.py: requests/s, p50/p99 publish -> completed, the worker's CPU ms per request, SQL
statements per request (pg_stat_statements, without BEGIN/COMMIT; split into the shop's, those that
name ``customers``, and the rest, the store's) and commits per request (pg_stat_database: the whole
database, since both schemas live in it; the shop's erasure is one transaction, so the store's are the
rest less one). Afterwards it checks that every erased
customer's personal columns are NULL with id and created_at intact, and that no other row changed;
it exits non-zero when a check fails.

Usage: .venv/bin/python bench/sql_capacity.py [--requests 1000] [--customers 5000] [--concurrency 16]
       [--max-in-flight 64] [--pg-url URL] [--no-verification] [--tree /tmp/oubli-before]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

# bench/ is this script's folder, so on sys.path: the plumbing is bench/capacity.py's, not a copy.
from _common import pg_schema
from capacity import (
    PG_URL,
    CpuSplit,
    DbCounters,
    Publisher,
    Watch,
    cpu_seconds,
    free_port,
    loop_seconds,
    loop_split,
    percentile,
    print_header,
    run_topics,
    show_where_time_went,
    start_worker,
    stop_processes,
    wait_started,
)

from connectors.sql_config import normalised_email_sql
from worker.support import build_command

SYSTEM = "shop"
# email too: the connector refuses an anonymise rule that keeps the match column (sql_config._unlinks).
PERSONAL = ("email", "first_name", "last_name", "phone", "address")
WARM = 20  # requests before the burst: the connector reflects its tables and fills its pool then

FIRST = ("Marie", "Jean", "Camille", "Lucas", "Léa", "Hugo", "Chloé", "Louis", "Emma", "Gabriel", "Inès", "Nathan",
         "Manon", "Jules", "Sarah", "Adam", "Zoé", "Arthur", "Alice", "Noah")
LAST = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
        "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier")
STREETS = ("rue de la Paix", "avenue Victor Hugo", "boulevard Voltaire", "rue Nationale", "place du Marché")
CITIES = (("75011", "Paris"), ("69003", "Lyon"), ("13001", "Marseille"), ("31000", "Toulouse"), ("44000", "Nantes"))

shop_metadata = sa.MetaData()
customers = sa.Table(
    "customers", shop_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(254), unique=True),  # NULL once erased
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("phone", sa.String(32)),
    sa.Column("address", sa.String(300)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
# The index the connector's email condition is written for (as in devkit/shop_schemas): without it,
# every erasure would scan the table.
sa.Index("ix_customers_email_norm", normalised_email_sql(customers.c.email))


# --- the shop database ---------------------------------------------------------------------------------


def fake_customers(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Distinct, made-up customers; emails carry capitals, which the commands will not."""
    rng = random.Random(seed)
    start = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(1, n + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        postal, city = rng.choice(CITIES)
        rows.append({
            "id": i, "email": f"{first}.{last}.{i}@Example.org".replace("é", "e").replace("è", "e"),
            "first_name": first, "last_name": last, "phone": f"+3361{i:07d}",
            "address": f"{rng.randint(1, 200)} {rng.choice(STREETS)}, {postal} {city}",
            "created_at": start + dt.timedelta(minutes=rng.randint(0, 3_000_000)),
        })
    return rows


def fill_shop(url: str, rows: Sequence[dict[str, Any]]) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        shop_metadata.create_all(conn)
        conn.execute(sa.insert(customers), list(rows))
    with engine.connect() as conn:  # planner statistics now, not whenever autovacuum comes by
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE customers"))
    engine.dispose()


def shop_system(url: str, concurrency: int) -> dict[str, Any]:
    tables = [{"table": "customers", "match": {"email": "email"}, "erase": "anonymise",
               "columns": {name: None for name in PERSONAL}}]
    # One pooled connection per concurrent call: a smaller pool would queue the calls on checkout.
    return {"connector": "sql", "concurrency": concurrency, "max_attempts": 4,
            "settings": {"url": url, "pool_size": concurrency, "tables": tables}}


def erasure(row: dict[str, Any]) -> dict[str, Any]:
    return build_command(kind="erasure", customer_id=f"shop-{row['id']}", emails=[row["email"].lower()],
                         requested_by="bench", systems=[SYSTEM])


def check_shop(url: str, original: Sequence[dict[str, Any]], erased: set[int]) -> list[str]:
    """Problems found: an erased row with a personal column left, or any other column or row changed."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        now = {row["id"]: dict(row) for row in conn.execute(sa.select(customers)).mappings()}
    engine.dispose()
    problems: list[str] = []
    for before in original:
        after = now.get(before["id"])
        if after is None:
            problems.append(f"customer {before['id']} is gone")
            continue
        expected = {**before, **dict.fromkeys(PERSONAL)} if before["id"] in erased else before
        changed = sorted(k for k in expected if expected[k] != after[k])
        if changed:
            kind = "erased" if before["id"] in erased else "untouched"
            problems.append(f"{kind} customer {before['id']}: {', '.join(changed)} not as expected")
    if len(now) != len(original):
        problems.append(f"{len(now)} customer rows, {len(original)} loaded")
    return problems


# --- the run -------------------------------------------------------------------------------------------


def shop_statements(counters: DbCounters) -> float:
    """The shop connector's statements: those naming its one table (the store has no ``customers``)."""
    if not counters.statements_ok:
        return float("nan")
    with counters.engine.connect() as conn:
        return float(conn.execute(sa.text(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database() AND s.query ~* '\\mcustomers\\M'")).scalar_one())


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    if args.customers < args.requests + WARM:
        sys.exit(f"--customers must be at least --requests + {WARM}: each erasure takes a different customer")
    original = fake_customers(args.customers)
    chosen = random.Random(11).sample(original, args.requests + WARM)
    warm, burst = chosen[:WARM], chosen[WARM:]
    prefix = f"sqlcap{uuid.uuid4().hex[:8]}"
    port = free_port()  # the worker's metrics: where its loop's time went
    with run_topics(prefix) as (kafka_raw, topics), pg_schema("sqlcap_store", args.pg_url) as store_url, \
            pg_schema("sqlcap_shop", args.pg_url) as shop_url:
        fill_shop(shop_url, original)
        raw = {"store_url": store_url, "subject_key": "bench-subject-key-" + "0" * 32, "kafka": kafka_raw,
               "systems": {SYSTEM: shop_system(shop_url, args.concurrency)},
               "retry": {"base_seconds": 0.05, "max_seconds": 0.5},
               "worker": {"poll_seconds": 0.05, "lease_seconds": 30, "drain_seconds": 5, "http_port": port,
                          "http_host": "127.0.0.1", "max_in_flight": args.max_in_flight,
                          "worker_id": f"{prefix}-w0"}}
        if not args.verification:
            raw["verification"] = {"enabled": False}
        watch = Watch(topics.receipts)
        publisher = Publisher(topics.commands)
        counters = DbCounters(args.pg_url)
        process, log_path = start_worker(raw, directory, f"{prefix}-w0", args.tree)
        try:
            wait_started(process, log_path)
            sent = publisher.publish([erasure(row) for row in warm])
            if not watch.wait(list(sent), 120, any_end=True):
                sys.exit(f"the warm-up did not end within 120 s:\n{log_path.read_text(errors='replace')[-3000:]}")
            counters.reset()
            statements0, commits0, _ = counters.read()
            shop0 = shop_statements(counters)
            cpu0 = cpu_seconds(process.pid)
            split = CpuSplit([process.pid])
            steps0 = loop_seconds([port])
            started = time.monotonic()
            sent = publisher.publish([erasure(row) for row in burst])
            ended = watch.wait(list(sent), args.timeout, any_end=True)
            done = [watch.completed[k] for k in sent if k in watch.completed]
            elapsed = (max(done) if done and ended else time.monotonic()) - started
            cpu = cpu_seconds(process.pid) - cpu0
            cpu_split = split.per_request(len(done))
            steps = loop_split(steps0, loop_seconds([port]), len(done))
            statements1, commits1, _ = counters.read()
            shop1 = shop_statements(counters)
            latencies = [watch.completed[k] - t for k, t in sent.items() if k in watch.completed]
        finally:
            stop_processes([process])
            watch.close()
            counters.dispose()
        problems = check_shop(shop_url, original, {row["id"] for row in chosen})
    n = len(done)
    other = {k: sorted(v.decode(errors="replace")[:200] for v in watch.terminal[k])
             for k in sent if k in watch.terminal and k not in watch.completed}
    per = max(n, 1)
    return {
        "requests": args.requests, "completed": n, "elapsed": elapsed, "rate": n / elapsed,
        "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "cpu_ms": cpu * 1000 / per,
        "statements": (statements1 - statements0) / per, "shop_statements": (shop1 - shop0) / per,
        "commits": (commits1 - commits0) / per, "not_completed": other, "problems": problems,
        "cpu_split": cpu_split, "loop_steps": steps,
    }


def show(result: dict[str, Any], customers_count: int) -> bool:
    """Prints the result; True when every check passed."""
    flag = "" if result["completed"] == result["requests"] else "  INCOMPLETE"
    store = result["statements"] - result["shop_statements"]
    print(f"  sql     {result['rate']:8.1f} req/s  p50 {result['p50']:.3f}s  p99 {result['p99']:.3f}s  "
          f"{result['cpu_ms']:6.2f} CPU ms/req  ({result['completed']} in {result['elapsed']:.1f}s){flag}")
    print(f"          statements/req {result['statements']:.2f} (store {store:.2f}, shop "
          f"{result['shop_statements']:.2f}), commits/req {result['commits']:.3f} (the whole database; the shop "
          f"commits once per erasure, so the store about {result['commits'] - 1:.3f})")
    show_where_time_went(result)
    not_completed = result["not_completed"]
    for key, values in list(not_completed.items())[:5]:
        print(f"          not completed: {key.decode()}: {values}")
    for problem in result["problems"][:10]:
        print(f"          shop check: {problem}")
    ok = not flag and not not_completed and not result["problems"]
    print(f"          checks: {len(not_completed)} requests ended otherwise than completed; shop rows: "
          f"{len(result['problems'])} problems among {customers_count} customers -> {'OK' if ok else 'FAILED'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16, help="the shop system's concurrency limit")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--tree", type=Path, help="run the worker from this checkout (a git worktree)")
    parser.add_argument("--no-verification", dest="verification", action="store_false",
                        help="turn the _verify step off (verification.enabled: false), to see what it costs")
    args = parser.parse_args()
    tree = f", tree {args.tree}" if args.tree else ""
    print_header("oubli sql capacity", f"{args.requests} erasures by email over {args.customers} customers, "
                 f"system concurrency {args.concurrency}, max_in_flight {args.max_in_flight}, "
                 f"verification {'on' if args.verification else 'off'}{tree}", args.pg_url, "store and shop")
    with tempfile.TemporaryDirectory(prefix="oubli-sql-capacity-") as tmp:
        result = run(args, Path(tmp))
    if not show(result, args.customers):
        sys.exit(1)


if __name__ == "__main__":
    main()
