"""All five vendor connectors pass the shared conformance suite against their stand-ins.

Rate limits are generous here (the limiter has its own tests); everything else is as configured.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance import ConnectorConformance, Harness
from tests.standins.harness import (  # noqa: F401 - fresh_limiters is an autouse fixture
    HARNESSES,
    STANDINS,
    FakeClock,
    VendorHarness,
    fresh_limiters,
)

pytestmark = pytest.mark.timeout(60)


def _harness(system: str) -> Iterator[VendorHarness]:
    standin = STANDINS[system]()
    standin.start()
    harness = HARNESSES[system](standin, FakeClock())
    try:
        yield harness
    finally:
        harness.connector.close()
        standin.stop()


class TestGoogleAnalyticsConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        yield from _harness("google_analytics")


class TestGoogleAdsConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        yield from _harness("google_ads")


class TestFacebookConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        yield from _harness("facebook")


class TestNostoConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        yield from _harness("nosto")


class TestShopimindConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        yield from _harness("shopimind")

