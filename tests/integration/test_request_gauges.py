"""The /metrics request gauges, counted in SQL on both stores: open requests by age, overdue, by status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from devkit.pipeline import record
from worker import states
from worker.config import Topics
from worker.store import db, reports
from worker.store.repository import Store
from worker.store.schema import requests


def test_open_requests_are_counted_by_age_and_overdue_and_every_request_by_status(db_url: str) -> None:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="gauges")
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    ages = {"a": timedelta(minutes=10), "b": timedelta(hours=1), "c": timedelta(hours=5), "d": timedelta(days=3),
            "e": timedelta(days=10), "f": timedelta(days=40), "g": timedelta(days=29, hours=23)}
    ids = {name: record(store, {"alpha": 3}, customer_id=f"C-{name}", requested_at=now - age, now=now)
           for name, age in ages.items()}
    with engine.begin() as conn:  # one finished request: never counted open, nor overdue
        conn.execute(requests.update().where(requests.c.request_id == ids["f"])
                     .values(status=states.RequestStatus.COMPLETED))
    by_status, overdue, buckets = reports.request_gauges(engine, now)
    assert by_status == {"accepted": 6, "completed": 1}
    # An age of exactly one hour is no longer under one hour.
    assert buckets == {"lt_1h": 1, "lt_1d": 2, "lt_7d": 1, "lt_30d": 2, "ge_30d": 0}
    assert overdue == 0  # each is due one month after it was requested
    assert reports.request_gauges(engine, now + timedelta(days=31))[1] == 6
    with engine.begin() as conn:
        conn.execute(requests.update().where(requests.c.request_id == ids["g"]).values(requested_at=None))
    assert reports.request_gauges(engine, now)[2]["lt_1h"] == 2  # no requested_at: counted as new
    engine.dispose()
