"""Read-only figures for ``/metrics``: requests by status, overdue and by age."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from worker.store.repository import OPEN_STATUSES
from worker.store.schema import requests
from worker.timefmt import aware


def request_gauges(engine: sa.Engine, now: datetime) -> tuple[dict[str, int], int, dict[str, int]]:
    """Requests by status, overdue open requests, and open requests by age (for /metrics)."""
    with engine.connect() as conn:
        by_status = {row.status: row.n for row in conn.execute(
            sa.select(requests.c.status, sa.func.count().label("n")).group_by(requests.c.status))}
        open_rows = conn.execute(sa.select(requests.c.requested_at, requests.c.due_at)
                                 .where(requests.c.status.in_(OPEN_STATUSES))).all()
    overdue = sum(1 for r in open_rows if r.due_at is not None and aware(r.due_at) < now)
    ages = {"lt_1h": 0, "lt_1d": 0, "lt_7d": 0, "lt_30d": 0, "ge_30d": 0}
    for row in open_rows:
        age = (now - aware(row.requested_at)).total_seconds() if row.requested_at else 0.0
        bucket = next((name for name, limit in (("lt_1h", 3600), ("lt_1d", 86400), ("lt_7d", 7 * 86400),
                                                 ("lt_30d", 30 * 86400)) if age < limit), "ge_30d")
        ages[bucket] += 1
    return by_status, overdue, ages
