"""Two workers on one PostgreSQL store keep the quota reserve together: over three quota windows,
background work never spends more than its share, and every standard request is served the day
it arrives even though a larger background backlog was there first."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.scheduling import Fleet, MutableClock, days, first_call, per_day, record, seed
from worker.store import db

T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
SYSTEM = "google_analytics"


def test_two_workers_together_keep_the_reserve(pg_url: str) -> None:
    db.migrate(db.create_engine(pg_url))
    clock = MutableClock(T0)
    fleet = Fleet(pg_url, clock, system=SYSTEM, daily_quota=20, share=0.5, workers=2, concurrency=4,
                  engine_factory=db.create_engine)
    seed(fleet.store, [(f"sweep-{i:03d}", T0 + days(10)) for i in range(40)], system=SYSTEM, now=T0)
    fleet.run_until(T0 + days(1))  # background's first two windows: 10 calls each
    arrival = clock()
    for i in range(10):
        record(fleet.store, request_id=f"customer-{i}", targets={SYSTEM: 8}, now=arrival, due_at=arrival + days(30))
    fleet.run_until(T0 + days(2))
    fleet.close()
    assert {str(day): n for day, n in per_day(fleet.calls, "background").items()} == {
        "2027-03-01": 10, "2027-03-02": 10, "2027-03-03": 10}
    assert all(n <= 20 for n in per_day(fleet.calls).values())
    served = first_call(fleet.calls)
    assert all(served[f"customer-{i}"] < arrival + days(1) for i in range(10))
    assert len(fleet.calls) == len(served)  # no call twice
    assert {c.worker for c in fleet.calls} == {0, 1}  # both workers served, from one budget
    assert {c.request_id for c in fleet.calls if c.at == arrival} >= {f"customer-{i}" for i in range(10)}
