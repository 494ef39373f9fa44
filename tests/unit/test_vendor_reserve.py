"""The real Google Analytics connector against its stand-in keeps the quota reserve: a background
erasure spends at most ``background_share`` of the daily quota, and a customer's erasure the rest."""

from __future__ import annotations

import pytest

from devkit.standins.google import GoogleAnalyticsStandIn
from devkit.standins.harness import FakeClock, build, fresh_limiters, make_subject  # noqa: F401
from worker.core.connector import Result
from worker.core.errors import QuotaDeferred
from worker.core.limits import RESERVE_SPENT, Limited, prioritized

ga = GoogleAnalyticsStandIn.fixture()


def test_the_ga_connector_spends_background_calls_from_the_reserve(ga: GoogleAnalyticsStandIn) -> None:
    connector = build("google_analytics", ga, FakeClock(), daily_quota=5, background_share=0.4,
                      rate_limit={"per_second": 100, "burst": 10})
    assert isinstance(connector, Limited) and connector.capacity().background_per_day == 2

    def erase() -> Result:
        result = connector.erase(make_subject(identifiers={"ga_client_id": ["1.2"]}))
        assert isinstance(result, Result)
        return result

    with prioritized("background"):
        erase()
        erase()
        with pytest.raises(QuotaDeferred) as refused:
            erase()
    assert refused.value.code == RESERVE_SPENT and "kept for standard requests" in refused.value.message
    assert [erase().outcome for _ in range(3)] == ["requested"] * 3  # the reserve: 3 of 5 for customers
    with pytest.raises(QuotaDeferred) as spent:
        erase()
    assert spent.value.code == "quota_deferred"
    assert len(ga.requests) == 5
    connector.close()
