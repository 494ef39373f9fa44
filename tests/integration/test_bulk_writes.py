"""Bulk updates against the real PostgreSQL, both ways (``StoreBase._update_many``): bound arrays for a few
rows, COPY into a temporary staging table for many. Each writes exactly the rows whose version guard and
lease owner match, and the staging table starts every transaction empty."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devkit.pipeline import record
from worker import states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store.base import STAGED_UPDATE_ROWS, StoreBase, _staging_table
from worker.store.claims import CLAIM_COLUMNS
from worker.store.repository import Store
from worker.store.schema import tasks


@pytest.mark.parametrize("count", [STAGED_UPDATE_ROWS // 4, STAGED_UPDATE_ROWS * 2], ids=["arrays", "staged"])
def test_a_bulk_update_writes_exactly_the_guarded_rows(pg_url: str, count: int) -> None:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="bulk-test")
    now = utcnow()
    for i in range(count // 2):
        record(store, {"alpha": 3, "beta": 3}, now=now, customer_id=f"C-bulk-{count}-{i}")
    with engine.connect() as conn:
        current = [dict(r) for r in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version)
                                                 .order_by(tasks.c.request_id, tasks.c.system)).mappings()]
    assert len(current) == count

    def claim_rows(chosen: list[dict[str, Any]], *, stale: bool = False) -> list[dict[str, Any]]:
        return [{"request_id": r["request_id"], "system": r["system"], "_version": r["version"] - stale,
                 "state": states.SystemState.RUNNING, "attempts": 1, "next_attempt_at": None, "lease_losses": 0,
                 "lease_owner": "bulk-test", "lease_expires_at": now + timedelta(seconds=30),
                 "version": r["version"] + 1} for r in chosen]

    first, second = current[0::2], current[1::2]
    with engine.connect() as conn:
        with conn.begin():
            # Half of them carry a version that has moved on: the guard keeps them out.
            written = StoreBase._update_many(conn, tasks, ("request_id", "system"), CLAIM_COLUMNS,
                                             [*claim_rows(first), *claim_rows(second, stale=True)], guard="version")
        assert written == len(first)
        with conn.begin():
            # The staging table (if this size used one) starts empty: the first transaction's rows are gone.
            if count >= STAGED_UPDATE_ROWS:
                staging = _staging_table(conn, tasks, ["request_id", "system", *CLAIM_COLUMNS, "_version"],
                                         ["request_id", "system", *CLAIM_COLUMNS, "version"])
                assert conn.execute(sa.text(f'SELECT count(*) FROM "{staging}"')).scalar_one() == 0
            renewed = [{"request_id": r["request_id"], "system": r["system"], "_version": r["version"] + 1,
                        "lease_expires_at": now + timedelta(minutes=5)} for r in first]
            assert StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), renewed,
                                          guard="version", owner="someone-else") == 0
            assert StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), renewed,
                                          guard="version", owner="bulk-test") == len(first)
        after = {(r.request_id, r.system): r for r in conn.execute(sa.select(tasks))}
    for row in first:
        task = after[(row["request_id"], row["system"])]
        assert (task.state, task.version, task.lease_owner) == ("running", row["version"] + 1, "bulk-test")
        assert task.lease_expires_at == now + timedelta(minutes=5)
    for row in second:
        task = after[(row["request_id"], row["system"])]
        assert (task.state, task.version, task.lease_owner) == ("pending", row["version"], None)
