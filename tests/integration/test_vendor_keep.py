"""A system that no longer holds the data, through Store + Executor: a background erasure of a
subject inactive for longer than the system keeps data is confirmed not_found without a call, and
says why in the receipt's store row and the audit trail; a customer's own request always calls."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.scheduling import Fleet, MutableClock, days, record
from worker.retention.vendorkeep import VendorRetention
from worker.store import backlog, db

T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
SYSTEM = "google_analytics"


def test_a_background_erasure_is_confirmed_without_a_call_and_a_customers_request_calls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.migrate(db.create_engine(url))
    clock = MutableClock(T0)
    fleet = Fleet(url, clock, system=SYSTEM, daily_quota=100, share=0.6, engine_factory=db.create_engine,
                  skip=VendorRetention({SYSTEM: 426}))
    inactive = T0 - days(800)
    record(fleet.store, request_id="sweep-old", targets={SYSTEM: 8}, now=T0, due_at=T0 + days(30),
           priority="background", last_activity_at=inactive)
    record(fleet.store, request_id="sweep-recent", targets={SYSTEM: 8}, now=T0, due_at=T0 + days(30),
           priority="background", last_activity_at=T0 - days(100))
    record(fleet.store, request_id="customer", targets={SYSTEM: 8}, now=T0, due_at=T0 + days(30),
           last_activity_at=inactive)
    # The projection knows it too: the erasure that needs no call waits for no quota.
    waiting = backlog.queued(fleet.store.engine, [SYSTEM], now=T0, keeps_data_days={SYSTEM: 426})[SYSTEM]
    assert sorted(q.request_id for q in waiting) == ["customer", "sweep-recent"]
    assert len(backlog.queued(fleet.store.engine, [SYSTEM])[SYSTEM]) == 3
    fleet.run_until(T0 + days(1))
    fleet.close()
    assert sorted(c.request_id for c in fleet.calls) == ["customer", "sweep-recent"]
    request, tasks, events = fleet.store.get("sweep-old")
    assert request["status"] == "completed"
    assert (tasks[0]["outcome"], tasks[0]["detail"]) == (
        "not_found", "google_analytics keeps data 426 days and the subject's last activity is older: "
        "nothing left to erase, no call made")
    assert fleet.store.receipt("sweep-old")["systems"][0]["outcome"] == "not_found"
