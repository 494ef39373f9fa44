"""Token buckets, daily quotas and the gate: exact admissions on a fake clock, no sleeping, thread safety."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from connectors.ratelimit import REGISTRY, DailyQuota, Gate, RateSpec, Registry, TokenBucket
from tests.standins.harness import FakeClock, fresh_limiters  # noqa: F401 - autouse fixture
from worker.errors import QuotaDeferred, Throttled

T0 = 1_800_000_000.0


def test_bucket_admits_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(RateSpec(per_second=2.0, burst=3))
    assert [bucket.try_acquire(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(T0) == pytest.approx(0.5)
    assert bucket.try_acquire(T0 + 0.5) == 0.0
    assert bucket.try_acquire(T0 + 0.5) == pytest.approx(0.5)


def test_bucket_never_holds_more_than_its_burst_and_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(RateSpec(per_second=1.0, burst=2))
    bucket.try_acquire(T0)
    assert bucket.try_acquire(T0 + 3600) == 0.0 and bucket.try_acquire(T0 + 3600) == 0.0
    assert bucket.try_acquire(T0 + 3600) > 0
    assert bucket.try_acquire(T0 + 10) > 0  # stepping back refills nothing


def test_hold_refuses_everything_until_it_ends_then_resumes_with_one_token() -> None:
    bucket = TokenBucket(RateSpec(per_second=10.0, burst=10))
    bucket.hold(T0, 7.0)
    assert bucket.try_acquire(T0) == pytest.approx(7.0)
    assert bucket.try_acquire(T0 + 6.9) == pytest.approx(0.1)
    assert bucket.try_acquire(T0 + 7.0) == 0.0
    assert bucket.try_acquire(T0 + 7.0) == pytest.approx(0.1)


def test_ten_thousand_attempts_at_one_and_a_half_per_second() -> None:
    """Every 10 ms of fake time one attempt: 100 s, 10,000 attempts."""
    bucket = TokenBucket(RateSpec(per_second=1.5, burst=1))
    admitted = [T0 + i * 0.01 for i in range(10_000) if bucket.try_acquire(T0 + i * 0.01) == 0.0]
    assert 149 <= len(admitted) <= 151  # 1 + 1.5 × 100
    per_second: dict[int, int] = {}
    for stamp in admitted:
        per_second[int(stamp - T0)] = per_second.get(int(stamp - T0), 0) + 1
    assert max(per_second.values()) <= 2  # never more than ⌈1.5⌉ in a calendar second
    for start in range(0, 100, 2):  # and 1.5/s on average over any two seconds: at most 1 + 3
        assert sum(per_second.get(s, 0) for s in (start, start + 1)) <= 4
    gaps = [b - a for a, b in zip(admitted, admitted[1:], strict=False)]
    assert min(gaps) >= 1 / 1.5 - 0.011


def test_daily_quota_spends_then_defers_to_midnight_pacific() -> None:
    quota = DailyQuota(500, "America/Los_Angeles")
    noon_la = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)  # 12:00 PST (UTC-8)
    assert sum(1 for _ in range(10_000) if quota.try_acquire(noon_la) == 0.0) == 500
    assert quota.try_acquire(noon_la) == pytest.approx(12 * 3600)
    assert quota.try_acquire(noon_la + timedelta(hours=12)) == 0.0  # a new day in Los Angeles
    quota.exhaust(noon_la + timedelta(hours=13))
    assert quota.try_acquire(noon_la + timedelta(hours=13)) > 0


def test_gate_throttles_without_spending_the_daily_quota() -> None:
    clock = FakeClock()
    registry = Registry()
    quota = registry.quota("q", 3)
    gate = Gate("sys", [("b", registry.bucket("b", RateSpec(1.0, 1)))], [("q", quota)], clock.now)
    gate.admit()
    with pytest.raises(Throttled) as caught:
        gate.admit()
    assert caught.value.retry_after == pytest.approx(1.0)
    assert quota.used(clock.now()) == 1  # the refused call gave its quota back
    clock.advance(1)
    gate.admit()
    clock.advance(1)
    gate.admit()
    clock.advance(1)
    with pytest.raises(QuotaDeferred) as deferred:
        gate.admit()
    assert "daily quota q" in str(deferred.value) and (deferred.value.retry_after or 0) > 0


def test_gate_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("a rate limiter must never sleep a thread")

    monkeypatch.setattr(time, "sleep", no_sleep)
    clock = FakeClock()
    gate = Gate("sys", [("b", REGISTRY.bucket("b", RateSpec(0.001, 1)))], [], clock.now)
    gate.admit()
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(Throttled):
            gate.admit()
    assert time.perf_counter() - started < 0.5  # a thousand refusals, each at once


def test_buckets_are_shared_by_name_across_instances() -> None:
    first = REGISTRY.bucket("vendor:x", RateSpec(1.0, 1))
    assert REGISTRY.bucket("vendor:x", RateSpec(1.0, 1)) is first
    assert REGISTRY.bucket("vendor:y", RateSpec(1.0, 1)) is not first
    assert first.try_acquire(T0) == 0.0
    assert REGISTRY.bucket("vendor:x", RateSpec(1.0, 1)).try_acquire(T0) > 0


def test_concurrent_callers_get_exactly_the_burst() -> None:
    bucket = TokenBucket(RateSpec(per_second=0.001, burst=50))
    admitted = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            if bucket.try_acquire(T0) == 0.0:
                with lock:
                    admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 50


def test_rate_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RateSpec(0, 1)
    with pytest.raises(ValueError):
        RateSpec(1, 0.5)
