"""The projection, on a fake clock: standard first, earliest deadline, the reserve, today's use,
the rate within a window, the quota's time zone, and the reasons it gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.core.limits import Capacity
from worker.foresight import Queued, SystemLoad, by_request, days_to_drain, project, windows

NOW = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
MIDNIGHT = datetime(2027, 3, 2, tzinfo=UTC)
GA = Capacity(daily_quota=10, per_second=None, background_share=0.6)


def q(request_id: str, priority: str = "standard", due_days: float = 30, seq: int = 0) -> Queued:
    return Queued(request_id, priority, NOW + timedelta(days=due_days), seq)


def served(load: SystemLoad) -> dict[str, datetime]:
    return {p.request_id: p.served_by for p in project(load, NOW)}


def test_standard_first_then_background_within_its_share_earliest_deadline_first() -> None:
    queued = [q(f"b{i}", "background", due_days=40 - i, seq=i) for i in range(8)]
    queued += [q("s1", seq=100), q("s0", due_days=5)]
    got = served(SystemLoad("ga", GA, queued))
    assert got["s0"] == got["s1"] == NOW
    today = {r for r, at in got.items() if at == NOW}
    assert today == {"s0", "s1", "b7", "b6", "b5", "b4", "b3", "b2"}  # 6 background: the reserve
    assert got["b1"] == got["b0"] == MIDNIGHT


def test_order_within_a_deadline_is_intake_order_and_projections_come_in_serving_order() -> None:
    queued = [q("late-seq", "background", 10, seq=2), q("early-seq", "background", 10, seq=1)]
    assert [p.request_id for p in project(SystemLoad("ga", GA, queued), NOW)] == ["early-seq", "late-seq"]


def test_what_was_spent_today_counts() -> None:
    queued = [q(f"b{i}", "background", seq=i) for i in range(3)] + [q("s", seq=9)]
    got = served(SystemLoad("ga", GA, queued, used_today=8, background_used_today=5))
    assert got["s"] == NOW and got["b0"] == NOW  # 2 left today: one standard, one background (reserve 6 - 5)
    assert got["b1"] == got["b2"] == MIDNIGHT


def test_a_spent_quota_moves_everything_to_the_next_window() -> None:
    got = served(SystemLoad("ga", GA, [q("s")], used_today=10))
    assert got["s"] == MIDNIGHT


def test_standard_takes_the_whole_quota_before_background_gets_any() -> None:
    queued = [q(f"s{i}", seq=i) for i in range(15)] + [q("b", "background", due_days=1)]
    got = served(SystemLoad("ga", GA, queued))
    assert sum(at == NOW for at in got.values()) == 10 and got["b"] == MIDNIGHT
    assert got["s14"] == MIDNIGHT  # 5 standard and the background one share the next day


def test_calls_within_a_window_are_spaced_by_the_rate() -> None:
    capacity = Capacity(daily_quota=500, per_second=2.0)
    got = served(SystemLoad("ga", capacity, [q(f"s{i}", seq=i) for i in range(5)]))
    assert got["s4"] == NOW + timedelta(seconds=2)


def test_windows_start_at_midnight_in_the_quotas_time_zone_across_a_dst_change() -> None:
    la = Capacity(daily_quota=1, per_second=None, tz="America/Los_Angeles")
    start = datetime(2027, 3, 13, 12, tzinfo=UTC)  # 04:00 in LA, the day before the spring change
    first = list(zip(range(3), windows(la, start), strict=False))
    assert [w.astimezone(UTC).hour for _, w in first] == [12, 8, 7]  # PST midnight, then PDT midnight


def test_late_requests_say_why_and_the_request_view_takes_its_slowest_system() -> None:
    slow = SystemLoad("ga", Capacity(daily_quota=1, per_second=None), [q("a", "background", due_days=1, seq=1)] +
                      [q(f"x{i}", due_days=1, seq=10 + i) for i in range(3)])
    fast = SystemLoad("nosto", Capacity(daily_quota=100, per_second=None), [q("a", "background", due_days=1, seq=1)])
    forecasts = by_request([*project(slow, NOW), *project(fast, NOW)])
    a = next(f for f in forecasts if f.request_id == "a")
    assert a.late and a.systems == ("ga", "nosto") and a.served_by == NOW.replace(hour=0) + timedelta(days=3)
    assert a.reason == ("ga: 3 tasks ahead at 1/day, 1/day for background work: served about 2027-03-04, "
                        "2 day(s) after its due date")
    assert [f.late for f in forecasts] == sorted((f.late for f in forecasts), reverse=True)  # at risk first
    on_time = next(f for f in forecasts if f.request_id == "x0")
    assert not on_time.late and on_time.reason == "ga: 0 tasks ahead at 1/day: served about 2027-03-01"


def test_an_unlimited_system_or_an_empty_backlog_projects_nothing() -> None:
    assert project(SystemLoad("loyalty", Capacity(daily_quota=None, per_second=None), [q("a")]), NOW) == []
    assert project(SystemLoad("ga", GA, []), NOW) == []
    assert days_to_drain(12_400, 500) == 24.8 and days_to_drain(5, None) is None
