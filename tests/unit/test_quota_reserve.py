"""The quota reserve: background work spends at most its share of a daily quota, in one process and
across workers sharing the store; and systems that no longer hold the data are skipped, with proof."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.ratelimit import Gate, Registry
from connectors.vendor import Options, build_gate
from worker.core.connector import ConnectorContext, Subject
from worker.core.errors import ConfigError, QuotaDeferred
from worker.core.limits import RESERVE_SPENT, Capacity, QuotaSpec, prioritized
from worker.retention.vendorkeep import VendorRetention
from worker.store import db
from worker.store.ratelimits import StoreLimits
from worker.store.records import ClaimedTask

NOW = datetime(2027, 3, 1, 12, tzinfo=UTC)


def _gate(limits: object, quota: int = 10, share: float = 0.6) -> Gate:
    return Gate("ga", buckets=(), quotas=(("ga:property:1", QuotaSpec(quota)),), now=lambda: NOW,
                limits=limits, background_share=share)  # type: ignore[arg-type]


def _admitted(gate: Gate, priority: str, tries: int) -> tuple[int, list[str]]:
    passed, codes = 0, []
    with prioritized(priority):
        for _ in range(tries):
            try:
                gate.admit()
                passed += 1
            except QuotaDeferred as exc:
                codes.append(exc.code)
    return passed, codes


def test_background_spends_its_share_and_the_rest_stays_for_standard() -> None:
    gate = _gate(Registry())
    passed, codes = _admitted(gate, "background", 10)
    assert passed == 6 and set(codes) == {RESERVE_SPENT}
    assert _admitted(gate, "standard", 10)[0] == 4  # the whole rest of the quota, and no more


def test_standard_may_take_the_whole_quota_and_background_then_gets_nothing() -> None:
    gate = _gate(Registry())
    assert _admitted(gate, "standard", 9)[0] == 9
    passed, codes = _admitted(gate, "background", 5)
    assert passed == 1 and codes == ["quota_deferred"] * 4


def test_a_share_of_one_means_no_reserve_and_the_capacity_says_what_holds() -> None:
    assert _admitted(_gate(Registry(), share=1.0), "background", 12)[0] == 10
    capacity = _gate(Registry(), quota=500).capacity()
    assert capacity == Capacity(daily_quota=500, per_second=None, background_share=0.6, tz="UTC",
                                quota_keys=("ga:property:1",))
    assert (capacity.per_day, capacity.background_per_day) == (500, 300)
    assert Capacity(daily_quota=500, per_second=0.001).per_day == 86  # the rate binds


def test_build_gate_reads_background_share_and_refuses_more_than_the_whole() -> None:
    context = ConnectorContext(now=lambda: NOW, limits=Registry())
    gate = build_gate(Options("ga", {}), context, buckets={}, quotas={"ga:p": 500})
    assert gate.background_share == 0.6
    assert build_gate(Options("ga", {"background_share": 0.25}), context, buckets={},
                      quotas={"ga:p": 500}).capacity().background_per_day == 125
    with pytest.raises(ConfigError):
        build_gate(Options("ga", {"background_share": 1.5}), context, buckets={}, quotas={"ga:p": 500})


def test_two_workers_on_one_store_keep_the_reserve_when_they_admit_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.migrate(db.create_engine(url))
    gates = [_gate(StoreLimits(db.create_engine(url)), quota=40, share=0.5) for _ in range(2)]
    counts = {"background": 0, "standard": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(gate: Gate, priority: str) -> None:
        barrier.wait()
        passed, _ = _admitted(gate, priority, 30)
        with lock:
            counts[priority] += passed

    threads = [threading.Thread(target=worker, args=(gates[i % 2], "background")) for i in range(6)]
    threads += [threading.Thread(target=worker, args=(gates[i], "standard")) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert counts["background"] <= 20 and counts["background"] + counts["standard"] == 40
    assert counts["standard"] >= 20


def _task(priority: str, last_activity: datetime | None, kind: str = "erasure", system: str = "ga") -> ClaimedTask:
    subject = Subject(request_id="r", subject_ref="ref", customer_id="C-1", priority=priority,
                      last_activity_at=last_activity)
    return ClaimedTask(request_id="r", system=system, kind=kind, subject=subject, polling=False, vendor_ref=None,
                       attempt=1, version=1)


@pytest.mark.parametrize(("task", "skipped"), [
    (_task("background", NOW - timedelta(days=800)), True),
    (_task("background", NOW - timedelta(days=400)), False),  # the vendor may still hold it
    (_task("standard", NOW - timedelta(days=800)), False),  # a customer asked: always call
    (_task("background", None), False),  # nothing known of the subject's activity
    (_task("background", NOW - timedelta(days=800), kind="export"), False),
    (_task("background", NOW - timedelta(days=800), system="loyalty"), False),  # keeps data as long as needed
])
def test_a_system_that_no_longer_holds_the_data_is_confirmed_without_a_call(task: ClaimedTask, skipped: bool) -> None:
    result = VendorRetention({"ga": 426, "loyalty": None})(task, NOW)
    assert (result is not None) == skipped
    if result is not None:
        assert result.outcome == "not_found"
        assert result.detail == ("ga keeps data 426 days and the subject's last activity is older: "
                                 "nothing left to erase, no call made")
