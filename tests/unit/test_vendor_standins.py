"""The stand-ins' public API, as the demo and the end-to-end tests use it."""

from __future__ import annotations

import pytest

from connectors import registry
from devkit import standins
from devkit.standins.harness import FakeClock, MemoryIdentity, fresh_limiters, make_subject  # noqa: F401
from tests.conformance import settle
from worker.core.connector import ConnectorContext

pytestmark = pytest.mark.timeout(30)


def test_start_all_serves_every_vendor_connector_from_its_settings() -> None:
    urls = standins.start_all()
    try:
        assert sorted(urls) == ["facebook", "google_ads", "google_analytics", "nosto", "shopimind"]
        assert standins.start_all() == urls  # started once per process
        vendors = standins.running()
        ids = {"ga_client_id": ["123.456"], "facebook_user_id": ["10229"], "shopimind_customer_id": ["88"]}
        emails, phones = ["marie.dupont@example.fr"], ["+33612345678"]
        vendors.seed_subject(emails=emails, phones=phones, identifiers=ids)
        assert all(vendors.holds_subject(emails=emails, phones=phones, identifiers=ids).values())
        clock, outcomes = FakeClock(), {}
        subject = make_subject(emails=emails, phones=phones, identifiers=ids)
        for system, settings in vendors.settings().items():
            connector = registry.build(system, system, settings, ConnectorContext(clock.now, MemoryIdentity()))
            outcomes[system] = settle(connector, subject, connector.erase(subject)).outcome
            connector.close()
        assert outcomes == {"google_analytics": "requested", "google_ads": "requested", "facebook": "erased",
                            "nosto": "requested", "shopimind": "requested"}
        assert not any(vendors.holds_subject(emails=emails, phones=phones, identifiers=ids).values())
    finally:
        standins.stop_all()
    with pytest.raises(RuntimeError):
        standins.running()
