"""What the claim's waiting-task scan reads as a store fills, before and after ``VACUUM tasks``.

Sends ``--requests`` erasures (10 no-op systems each) through a fresh store on the durable PostgreSQL,
with autovacuum off on ``tasks``: intake in batches of 500, then claims and results until nothing is
due, in process (no Kafka, no connector calls). Then records 500 more and prints the buffers that
``EXPLAIN (ANALYZE, BUFFERS)`` of the claim's waiting-task statement (``WAITING_PG``) reads for them,
for the scan of ``ix_tasks_claim`` and in all, before and after a ``VACUUM tasks``. The difference is
the dead index entries of tasks already claimed, which every claim walks until vacuum removes them.

    .venv/bin/python bench/claim_scan.py --requests 20000     # about a minute
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from _common import pg_schema
from capacity import PG_URL, commands

from worker import compose, config, logs, states
from worker.core.timefmt import utcnow
from worker.intake import Message
from worker.store.claims import WAITING_PG
from worker.store.repository import TaskUpdate

SYSTEMS = [f"s{i:02d}" for i in range(10)]
BATCH = 500


def _messages(n: int) -> list[Message]:
    return [Message(value=json.dumps(c).encode(), key=c["subject"]["customer_id"].encode(), headers=[],
                    source=f"bench/0/{i}") for i, c in enumerate(commands(n, len(SYSTEMS)))]


def _buffers(engine: sa.Engine) -> tuple[int, int, float]:
    """(buffers of the index scan, buffers in all, execution ms) of the waiting-task statement."""
    text = re.sub(r":(\w+)", r"%(\1)s", WAITING_PG.text)
    params: dict[str, Any] = {"now": utcnow(), "systems": SYSTEMS, "limits": [100] * len(SYSTEMS),
                              "total": 100 * len(SYSTEMS)}
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text, params)
        plan = cursor.fetchone()[0][0]

    def scan_of(node: dict[str, Any]) -> int | None:
        if node.get("Index Name") == "ix_tasks_claim":
            return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))
        for child in node.get("Plans", []):
            found = scan_of(child)
            if found is not None:
                return found
        return None

    top = plan["Plan"]
    total = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    return scan_of(top) or 0, total, float(plan["Execution Time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args()
    logs.configure(level="WARNING")
    with pg_schema("claim_scan", args.pg_url) as url:
        systems = {s: {"connector": "bench.noop", "concurrency": 100} for s in SYSTEMS}
        settings = config.build({"store_url": url, "subject_key": "k" * 40,
                                 "kafka": {"bootstrap_servers": "127.0.0.1:1"}, "systems": systems}, env={})
        parts = compose.build(settings, migrate=True)
        try:
            engine, store = parts.engine, parts.store
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE tasks SET (autovacuum_enabled = false)"))
            limits = dict.fromkeys(SYSTEMS, 100)
            started = time.monotonic()
            for _ in range(max(1, args.requests // BATCH)):
                parts.intake.handle_batch(_messages(BATCH), utcnow())
                while True:
                    now = utcnow()
                    claimed = store.claim_due(now=now, lease_until=now + timedelta(seconds=30), limits=limits,
                                              room=1000)
                    if not claimed:
                        break
                    store.finish_many([(t, states.Confirm("erased"), TaskUpdate()) for t in claimed], utcnow())
            print(f"{args.requests} requests ({args.requests * len(SYSTEMS)} tasks) through in "
                  f"{time.monotonic() - started:.0f} s; {BATCH} more waiting")
            parts.intake.handle_batch(_messages(BATCH), utcnow())
            for label in ("before VACUUM tasks", "again"):
                scan, total, ms = _buffers(engine)
                print(f"  {label:20} ix_tasks_claim scan {scan:6} buffers, statement {total:6} buffers, {ms:6.1f} ms")
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM tasks"))
            scan, total, ms = _buffers(engine)
            print(f"  {'after VACUUM tasks':20} ix_tasks_claim scan {scan:6} buffers, statement {total:6} buffers, "
                  f"{ms:6.1f} ms")
        finally:
            parts.close()


if __name__ == "__main__":
    main()
