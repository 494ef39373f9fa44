"""One contract for every ``Limits`` backend: this process's registry, and the store-backed one on
SQLite and on PostgreSQL. Exact admissions on a fake clock, no sleeping, all or nothing, thread safety.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.ratelimit import REGISTRY, Gate, Registry
from devkit.standins.harness import FakeClock, fresh_limiters  # noqa: F401 - autouse fixture
from worker.core.errors import QuotaDeferred, Throttled
from worker.core.limits import Limits, QuotaSpec, RateSpec
from worker.store import db
from worker.store.ratelimits import StoreLimits
from worker.store.schema import metadata, rate_buckets, rate_quotas

T0 = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["process", "sqlite", "postgresql"])
def limits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Limits]:
    if request.param == "process":
        yield Registry()
        return
    url = f"sqlite:///{tmp_path / 'limits.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = db.create_engine(url)
    metadata.create_all(engine, tables=[rate_buckets, rate_quotas])  # the migration has its own test
    yield StoreLimits(engine)
    engine.dispose()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def take(limits: Limits, rate: RateSpec, seconds: float, key: str = "b") -> float:
    """0 when admitted, else the seconds to wait."""
    refusal = limits.admit([(key, rate)], [], at(seconds))
    return 0.0 if refusal is None else refusal.wait


def is_store(limits: Limits) -> bool:
    return isinstance(limits, StoreLimits)


def test_a_rate_admits_its_burst_then_says_how_long_to_wait(limits: Limits) -> None:
    rate = RateSpec(per_second=2.0, burst=3)
    assert [take(limits, rate, 0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(limits, rate, 0) == pytest.approx(0.5)
    assert take(limits, rate, 0.5) == 0.0
    assert take(limits, rate, 0.5) == pytest.approx(0.5)


def test_a_rate_never_holds_more_than_its_burst_and_ignores_a_clock_stepping_back(limits: Limits) -> None:
    rate = RateSpec(per_second=1.0, burst=2)
    take(limits, rate, 0)
    assert take(limits, rate, 3600) == 0.0 and take(limits, rate, 3600) == 0.0
    assert take(limits, rate, 3600) > 0
    assert take(limits, rate, 10) > 0  # stepping back refills nothing


def test_hold_refuses_everything_until_it_ends_then_resumes_with_one_call(limits: Limits) -> None:
    rate = RateSpec(per_second=10.0, burst=10)
    limits.hold([("b", rate)], at(0), 7.0)
    assert take(limits, rate, 0) == pytest.approx(7.0)
    assert take(limits, rate, 6.9) == pytest.approx(0.1)
    assert take(limits, rate, 7.0) == 0.0
    assert take(limits, rate, 7.0) == pytest.approx(0.1)


def test_one_and_a_half_per_second_over_many_attempts(limits: Limits) -> None:
    """An attempt every 10 ms of fake time: 100 s in this process, 10 s against a store."""
    attempts = 1_000 if is_store(limits) else 10_000
    rate = RateSpec(per_second=1.5, burst=1)
    admitted = [i * 0.01 for i in range(attempts) if take(limits, rate, i * 0.01) == 0.0]
    seconds = attempts * 0.01
    assert 1.5 * seconds - 1 <= len(admitted) <= 1 + 1.5 * seconds
    per_second: dict[int, int] = {}
    for stamp in admitted:
        per_second[int(stamp)] = per_second.get(int(stamp), 0) + 1
    assert max(per_second.values()) <= 2  # never more than ⌈1.5⌉ in a calendar second
    for start in range(0, int(seconds), 2):  # and 1.5/s on average over any two seconds: at most 1 + 3
        assert sum(per_second.get(s, 0) for s in (start, start + 1)) <= 4
    gaps = [b - a for a, b in zip(admitted, admitted[1:], strict=False)]
    assert min(gaps) >= 1 / 1.5 - 0.011


def test_a_daily_quota_spends_then_defers_to_midnight_pacific(limits: Limits) -> None:
    quota = QuotaSpec(50, "America/Los_Angeles")
    noon_la = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)  # 12:00 PST (UTC-8)
    refusals = [limits.admit([], [("q", quota)], noon_la) for _ in range(80)]
    assert refusals.count(None) == 50
    assert refusals[-1] is not None and refusals[-1].kind == "quota"
    assert refusals[-1].wait == pytest.approx(12 * 3600)
    assert limits.admit([], [("q", quota)], noon_la + timedelta(hours=11, minutes=59)) is not None
    assert limits.admit([], [("q", quota)], noon_la + timedelta(hours=12)) is None  # a new day in Los Angeles
    limits.exhaust([("q", quota)], noon_la + timedelta(hours=13))
    assert limits.admit([], [("q", quota)], noon_la + timedelta(hours=13)) is not None


def test_a_gate_throttled_by_its_rate_spends_none_of_its_quota(limits: Limits) -> None:
    clock = FakeClock()
    gate = Gate("sys", [("b", RateSpec(1.0, 1))], [("q", QuotaSpec(3))], clock.now, limits)
    gate.admit()
    with pytest.raises(Throttled) as caught:
        gate.admit()
    assert caught.value.retry_after == pytest.approx(1.0)
    for _ in range(2):  # the refused call gave its quota back: two more pass
        clock.advance(1)
        gate.admit()
    clock.advance(1)
    with pytest.raises(QuotaDeferred) as deferred:
        gate.admit()
    assert "daily quota q" in str(deferred.value) and (deferred.value.retry_after or 0) > 0


def test_a_gate_deferred_by_its_quota_spends_none_of_its_rate(limits: Limits) -> None:
    clock = FakeClock()
    rate = ("b", RateSpec(1.0, 1))
    quota_first = Gate("sys", [rate], [("q", QuotaSpec(1))], clock.now, limits)
    rate_only = Gate("other", [rate], [], clock.now, limits)
    quota_first.admit()
    clock.advance(1)
    with pytest.raises(QuotaDeferred):
        quota_first.admit()
    rate_only.admit()  # the refusal took no slot of the shared rate


def test_exhausting_a_gate_defers_until_the_next_window() -> None:
    clock = FakeClock()  # 10:00 UTC = 02:00 PST
    gate = Gate("ga", [], [("q", QuotaSpec(500, "America/Los_Angeles"))], clock.now)
    assert gate.exhaust_quotas() == pytest.approx(22 * 3600)
    with pytest.raises(QuotaDeferred):
        gate.admit()
    assert REGISTRY.used("q", clock.now(), "America/Los_Angeles") == 500


def test_a_gate_never_sleeps(limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("a rate limiter must never sleep a thread")

    monkeypatch.setattr(time, "sleep", no_sleep)
    clock = FakeClock()
    gate = Gate("sys", [("b", RateSpec(0.001, 1))], [], clock.now, limits)
    gate.admit()
    refusals = 100 if is_store(limits) else 1000
    started = time.perf_counter()
    for _ in range(refusals):
        with pytest.raises(Throttled):
            gate.admit()
    assert (time.perf_counter() - started) / refusals < 0.02  # each at once (the wait would be 1000 s)


def test_limits_are_shared_by_name_across_gates(limits: Limits) -> None:
    clock = FakeClock()
    first = Gate("a", [("vendor:x", RateSpec(1.0, 1))], [], clock.now, limits)
    same = Gate("b", [("vendor:x", RateSpec(1.0, 1))], [], clock.now, limits)
    other = Gate("c", [("vendor:y", RateSpec(1.0, 1))], [], clock.now, limits)
    first.admit()
    other.admit()
    with pytest.raises(Throttled, match="rate limit vendor:x"):
        same.admit()


def test_concurrent_callers_get_exactly_the_burst(limits: Limits) -> None:
    rate = RateSpec(per_second=0.001, burst=50)
    threads, attempts = (8, 20) if is_store(limits) else (16, 100)
    admitted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(attempts):
            if take(limits, rate, 0) == 0.0:
                with lock:
                    admitted.append(1)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert len(admitted) == 50


def test_the_default_gate_uses_the_process_registry() -> None:
    clock = FakeClock()
    Gate("a", [("vendor:z", RateSpec(1.0, 1))], [], clock.now).admit()
    assert REGISTRY.admit([("vendor:z", RateSpec(1.0, 1))], [], clock.now()) is not None


def test_specs_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        RateSpec(0, 1)
    with pytest.raises(ValueError):
        RateSpec(1, 0.5)
    with pytest.raises(ValueError):
        QuotaSpec(0)
    with pytest.raises(KeyError):  # ZoneInfoNotFoundError
        QuotaSpec(5, "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="longer than"):
        Gate("sys", [("x" * 256, RateSpec(1, 1))], [], FakeClock().now)


def test_the_next_window_follows_the_time_zone_across_a_dst_change() -> None:
    quota = QuotaSpec(5, "America/Los_Angeles")
    midnight_pdt = datetime(2026, 11, 1, 7, 0, tzinfo=UTC)  # 00:00 PDT; clocks go back at 02:00
    assert quota.seconds_to_next_window(midnight_pdt) == 25 * 3600
    assert quota.day(midnight_pdt - timedelta(seconds=1)) < quota.day(midnight_pdt)
