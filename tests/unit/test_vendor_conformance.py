"""All five vendor connectors pass the shared conformance suite against their stand-ins.

Rate limits are generous here (the limiter has its own tests); everything else is as configured.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.standins.harness import HARNESSES, fresh_limiters, vendor_harness  # noqa: F401 - an autouse fixture
from tests.conformance import ConnectorConformance, Harness

pytestmark = pytest.mark.timeout(60)


class TestVendorConformance(ConnectorConformance):
    @pytest.fixture(params=sorted(HARNESSES))
    def harness(self, request: pytest.FixtureRequest) -> Iterator[Harness]:
        yield from vendor_harness(request.param)
