"""A burst of 10,000 erasures against the stand-ins, on a fake clock shared with them.

The GA stand-in enforces Google's 1.5 requests/s per property (it would answer 429), and logs
every call on the fake clock. The connector's limiter must keep it under that limit, refuse the
rest at once with ``Throttled`` (no thread sleeps), and leave another vendor (Nosto) unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from devkit.standins import GA_PROPERTY_ID
from devkit.standins.google import GoogleAnalyticsStandIn
from devkit.standins.harness import FakeClock, build, fresh_limiters, make_subject  # noqa: F401
from devkit.standins.nosto import NostoStandIn
from worker.core.connector import Result
from worker.core.errors import QuotaDeferred, Throttled

pytestmark = pytest.mark.timeout(120)
ATTEMPTS = 10_000
STEP = 0.01  # seconds of fake time between attempts: 100 s in all


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ga(clock: FakeClock) -> Iterator[GoogleAnalyticsStandIn]:
    standin = GoogleAnalyticsStandIn(clock=clock.timestamp)
    standin.max_per_second = 1.5  # Google's documented limit per property
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def nosto(clock: FakeClock) -> Iterator[NostoStandIn]:
    standin = NostoStandIn(clock=clock.timestamp)
    standin.start()
    yield standin
    standin.stop()


def test_burst_never_exceeds_the_ga_limit_and_never_holds_back_nosto(
        ga: GoogleAnalyticsStandIn, nosto: NostoStandIn, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("nothing may sleep a thread to wait for a rate limit")

    monkeypatch.setattr(time, "sleep", no_sleep)
    analytics = build("google_analytics", ga, clock)  # the documented defaults: 1.5/s, 500/day
    marketing = build("nosto", nosto, clock)  # 5/s by default
    admitted = throttled = nosto_done = 0
    slowest_refusal = 0.0
    for i in range(ATTEMPTS):
        subject = make_subject(emails=[f"p{i}@example.org"], identifiers={"ga_client_id": [f"{i}.1"]})
        started = time.perf_counter()
        try:
            result = analytics.erase(subject)
        except Throttled as exc:
            slowest_refusal = max(slowest_refusal, time.perf_counter() - started)
            assert 0 < (exc.retry_after or 0) <= 1 / 1.5 + 1e-6
            throttled += 1
        else:
            assert isinstance(result, Result) and result.outcome == "requested"
            admitted += 1
        try:
            marketing.erase(subject)
            nosto_done += 1
        except Throttled:
            pass
        clock.advance(STEP)
    analytics.close()
    marketing.close()

    seconds = ATTEMPTS * STEP
    assert admitted + throttled == ATTEMPTS
    assert 0.95 * 1.5 * seconds <= admitted <= 1 + 1.5 * seconds
    assert ga.count("upsert") == admitted  # a refusal never reached the vendor
    assert all(call.status == 200 for call in ga.calls)  # the vendor never had to say 429
    assert ga.peak_per_window(1.0, "upsert") <= 2  # never more than 1.5/s (⌈1.5⌉ in any second)
    assert ga.peak_per_window(10.0, "upsert") <= 16  # 1 + 1.5 × 10
    assert slowest_refusal < 0.25  # Throttled is raised at once (a sleep would take ≥ 0.67 s here)
    assert nosto_done >= 0.95 * 5 * seconds  # the other vendor kept its own pace
    # ... and within its own limit (5/s with a burst of 5): burst + rate × window in any window.
    assert nosto.peak_per_window(1.0, "redact") <= 10
    assert nosto.peak_per_window(10.0, "redact") <= 55
    assert nosto.count("redact") <= 5 + 5 * seconds


def test_daily_quota_defers_to_the_next_pacific_day(ga: GoogleAnalyticsStandIn, clock: FakeClock) -> None:
    analytics = build("google_analytics", ga, clock, rate_limit={"per_second": 1000, "burst": 1000})
    ga.max_per_second = None
    outcomes = {"admitted": 0, "deferred": 0}
    last_wait = 0.0
    for i in range(ATTEMPTS):
        try:
            analytics.erase(make_subject(identifiers={"ga_client_id": [f"{i}.2"]}))
            outcomes["admitted"] += 1
        except QuotaDeferred as exc:
            outcomes["deferred"] += 1
            last_wait = exc.retry_after or 0
        clock.advance(0.001)
    assert outcomes == {"admitted": 500, "deferred": ATTEMPTS - 500}
    assert ga.count("upsert") == 500
    now = clock.now()  # 10:00 UTC + 10 s = 02:00 PST: the window opens at the next Pacific midnight
    assert last_wait == pytest.approx(22 * 3600 - 10, abs=1)
    clock.advance(last_wait)
    after = analytics.erase(make_subject(identifiers={"ga_client_id": ["x.3"]}))
    assert isinstance(after, Result) and after.outcome == "requested"
    assert clock.now() - now == timedelta(seconds=last_wait)
    analytics.close()


def test_vendor_daily_limit_answer_defers_too(ga: GoogleAnalyticsStandIn, clock: FakeClock) -> None:
    """Another client of the project may have spent the quota: when the vendor says the day is spent, believe it."""
    analytics = build("google_analytics", ga, clock)
    ga.daily_limit = 0
    with pytest.raises(QuotaDeferred) as caught:
        analytics.erase(make_subject(identifiers={"ga_client_id": ["1.1"]}))
    assert "dailyLimitExceeded" in str(caught.value)
    clock.advance(2)
    with pytest.raises(QuotaDeferred):  # now refused locally, without a call
        analytics.erase(make_subject(identifiers={"ga_client_id": ["1.2"]}))
    assert ga.count("upsert") == 1
    analytics.close()


def test_property_limits_are_per_property(ga: GoogleAnalyticsStandIn, clock: FakeClock) -> None:
    first = build("google_analytics", ga, clock)
    second = build("google_analytics", ga, clock, property_id="987654321")
    same = build("google_analytics", ga, clock)
    subject = make_subject(identifiers={"ga_client_id": ["1.1"]})
    assert first.erase(subject) == second.erase(subject)  # both admitted: one bucket per property
    with pytest.raises(Throttled):
        same.erase(subject)  # another instance, same property: same bucket
    assert GA_PROPERTY_ID != "987654321"
    for connector in (first, second, same):
        connector.close()
