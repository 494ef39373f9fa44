"""The resurrection scan at scale: 100,000 tombstoned subjects against 100,000 customers on PostgreSQL.

Builds a fresh orders database (the sample schema) with ``--customers`` live accounts, and a fresh store
with the tombstones of ``--tombstones`` erased subjects (customer id, email and phone each, as the
``_verify`` step lays them), ``--resurrected`` of whom are back among the customers (a restored backup).
Then times ``oubli verify --dry-run``'s work (``worker.verification.scan.Scan`` over the ``orders_db``
connector's sightings): every row is hashed and looked up, a batch at a time. Reports rows scanned,
rows and subjects found, wall time and the process's peak RSS.

Usage: .venv/bin/python bench/verify_scan.py [--customers 100000] [--tombstones 100000] [--resurrected 100]
       [--batch 5000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqlalchemy as sa  # noqa: E402
from _common import pg_schema, require_stack  # noqa: E402

from connectors import orders_db  # noqa: E402
from devkit.shop_schemas import orders as orders_schema  # noqa: E402
from worker import states  # noqa: E402
from worker.config import Topics  # noqa: E402
from worker.core.connector import ConnectorContext, Subject  # noqa: E402
from worker.store import db  # noqa: E402
from worker.store.schema import tombstones  # noqa: E402
from worker.store.verification import VerificationStore  # noqa: E402
from worker.verification.scan import Scan  # noqa: E402
from worker.verification.step import tombstone_hashes  # noqa: E402

KEY = b"bench-tombstone-key-0123456789"
NOW = datetime.now(UTC)


def person(n: int) -> tuple[str, str, str]:
    return f"C-{n:07d}", f"person.{n}@example.fr", f"+3361{n:07d}"


def load_customers(url: str, count: int, resurrected: int, first_erased: int) -> None:
    engine = sa.create_engine(url)
    orders_schema.metadata.create_all(engine)
    customers = orders_schema.metadata.tables["customers"]
    # Live customers 0..count-1, except the last `resurrected`, who are erased subjects come back.
    rows = []
    for n in range(count):
        who = first_erased + n - (count - resurrected) if n >= count - resurrected else n
        customer_id, email, phone = person(who)
        rows.append({"customer_id": customer_id, "email": email, "phone": phone, "classification": "individual",
                     "created_at": NOW})
    with engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(customers.insert(), rows[start:start + 10_000])
    engine.dispose()


def load_tombstones(store: VerificationStore, count: int, first_erased: int) -> None:
    rows = []
    for n in range(first_erased, first_erased + count):
        customer_id, email, phone = person(n)
        subject = Subject(request_id=f"r-{n}", subject_ref=f"ref-{n}", customer_id=customer_id, emails=(email,),
                          phones=(phone,))
        rows += [{"kind": kind, "digest": digest, "request_id": f"r-{n}", "subject_ref": f"ref-{n}",
                  "created_at": NOW, "expires_at": NOW + timedelta(days=1095)}
                 for kind, digest in tombstone_hashes(KEY, subject)]
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(tombstones.insert(), rows[start:start + 10_000])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--tombstones", type=int, default=100_000)
    parser.add_argument("--resurrected", type=int, default=100)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    require_stack()
    first_erased = 10_000_000 - args.tombstones  # erased subjects' numbers never collide with live ones
    with pg_schema("bench_orders") as orders_url, pg_schema("bench_store") as store_url:
        started = time.perf_counter()
        load_customers(orders_url, args.customers, args.resurrected, first_erased)
        engine = db.create_engine(store_url)
        db.migrate(engine)
        store = VerificationStore(engine, topics=Topics(), policy=states.RetryPolicy(), actor="bench")
        load_tombstones(store, args.tombstones, first_erased)
        print(f"loaded {args.customers} customers and {store.tombstone_count(NOW)} tombstones "
              f"({args.tombstones} subjects) in {time.perf_counter() - started:.1f} s")
        connector = orders_db.create("orders_db", {"url": orders_url}, ConnectorContext(now=lambda: NOW))
        scan = Scan(store, tombstone_key=KEY, subject_key=b"bench-subject-key-0123456789", clock=lambda: NOW,
                    batch=args.batch)
        started = time.perf_counter()
        report = scan.run({"orders_db": connector}, None)
        seconds = time.perf_counter() - started
        connector.close()
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scan: {report.scanned} rows scanned, {sum(report.found.values())} found, {report.subjects} subjects, "
          f"{seconds:.1f} s ({report.scanned / seconds:,.0f} rows/s), batch {args.batch}, peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
