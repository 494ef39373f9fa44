"""Local stand-ins for the five vendor APIs, as real HTTP servers on 127.0.0.1.

For a demo or an end-to-end test::

    from devkit import standins

    vendors = standins.start()                       # or: urls = standins.start_all()
    systems = vendors.settings()                     # {system_id: settings block for the connector}
    vendors.seed_subject(emails=[...], phones=[...], identifiers={"facebook_user_id": ["10229"]})
    ...                                              # run oubli with connector: <system_id>
    vendors.holds_subject(emails=[...], ...)         # {system_id: still holds personal data?}
    standins.stop_all()

Each stand-in also offers fault injection (``fail_next``, ``rate_limit_next``, ``hang_next``,
``failing()``, ``refusing_credentials()``) and a call log (``calls``, ``peak_per_window``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devkit.standins.base import Reply, Request, StandIn
from devkit.standins.facebook import APP_ACCESS_TOKEN, FacebookStandIn
from devkit.standins.google import (
    ACCESS_TOKEN,
    ADS_LIST_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    DataManagerStandIn,
    GoogleAnalyticsStandIn,
)
from devkit.standins.nosto import API_TOKEN as NOSTO_TOKEN
from devkit.standins.nosto import NostoStandIn
from devkit.standins.shopimind import API_KEY as SHOPIMIND_KEY
from devkit.standins.shopimind import ShopimindStandIn

__all__ = [
    "ADS_LIST_ID", "GA_KINDS", "GA_PROPERTY_ID", "DataManagerStandIn", "FacebookStandIn",
    "GoogleAnalyticsStandIn", "NostoStandIn", "Reply", "Request",
    "ShopimindStandIn", "StandIn", "StandIns", "running", "settings_for", "start", "start_all", "stop_all",
]

GA_PROPERTY_ID = "123456789"
GA_KINDS = {"ga_client_id": "CLIENT_ID", "ga_user_id": "USER_ID", "ga_app_instance_id": "APP_INSTANCE_ID"}


def settings_for(system: str, standin: StandIn, **overrides: Any) -> dict[str, Any]:
    """The connector settings block that points ``system``'s connector at ``standin``."""
    common: dict[str, Any] = {"allow_insecure_http": True, "timeout_seconds": 5}
    if isinstance(standin, GoogleAnalyticsStandIn):
        specific: dict[str, Any] = {
            "base_url": standin.base_url, "property_id": GA_PROPERTY_ID, "project": "oubli-demo",
            "oauth": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                      "refresh_token": REFRESH_TOKEN, "token_url": f"{standin.url}/token"},
        }
    elif isinstance(standin, DataManagerStandIn):
        specific = {"base_url": standin.base_url, "access_token": ACCESS_TOKEN, "project": "oubli-demo",
                    "operating_account": {"account_type": "GOOGLE_ADS", "account_id": "1234567890"},
                    "user_list_ids": [ADS_LIST_ID], "poll_interval_seconds": 1}
    elif isinstance(standin, FacebookStandIn):
        specific = {"base_url": standin.base_url, "api_version": "v25.0", "app_id": "1234567890",
                    "app_access_token": APP_ACCESS_TOKEN}
    elif isinstance(standin, NostoStandIn):
        specific = {"base_url": standin.base_url, "api_token": NOSTO_TOKEN}
    elif isinstance(standin, ShopimindStandIn):
        specific = {"base_url": standin.base_url, "api_key": SHOPIMIND_KEY}
    else:
        raise ValueError(f"no settings known for {system}")
    return {**common, **specific, **overrides}


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class StandIns:
    google_analytics: GoogleAnalyticsStandIn
    google_ads: DataManagerStandIn
    facebook: FacebookStandIn
    nosto: NostoStandIn
    shopimind: ShopimindStandIn

    def all(self) -> dict[str, StandIn]:
        return {"google_analytics": self.google_analytics, "google_ads": self.google_ads,
                "facebook": self.facebook, "nosto": self.nosto, "shopimind": self.shopimind}

    def urls(self) -> dict[str, str]:
        return {system: settings_for(system, standin)["base_url"] for system, standin in self.all().items()}

    def settings(self, **overrides: Any) -> dict[str, dict[str, Any]]:
        """``{system_id: settings}``; the connector module has the same name as the system id."""
        return {system: settings_for(system, standin, **overrides) for system, standin in self.all().items()}

    def seed_subject(self, *, emails: Sequence[str] = (), phones: Sequence[str] = (),
                     identifiers: Mapping[str, Sequence[str]] | None = None) -> None:
        """Makes every stand-in hold data about this subject (as a real vendor would)."""
        identifiers = identifiers or {}
        for kind, id_type in GA_KINDS.items():
            for value in identifiers.get(kind, ()):
                self.google_analytics.seed(GA_PROPERTY_ID, id_type, value)
        self.google_ads.seed(ADS_LIST_ID, *[_sha("".join(e.split()).lower()) for e in emails],
                             *[_sha(p) for p in phones])
        for asid in identifiers.get("facebook_user_id", ()):
            self.facebook.seed(asid)
        for email in emails:
            self.nosto.seed(email)
        for customer_id in identifiers.get("shopimind_customer_id", ()):
            self.shopimind.seed(customer_id, email=emails[0] if emails else None)

    def holds_subject(self, *, emails: Sequence[str] = (), phones: Sequence[str] = (),
                      identifiers: Mapping[str, Sequence[str]] | None = None) -> dict[str, bool]:
        identifiers = identifiers or {}
        return {
            "google_analytics": any(self.google_analytics.holds(t, v) for k, t in GA_KINDS.items()
                                    for v in identifiers.get(k, ())),
            "google_ads": any(self.google_ads.holds(_sha("".join(e.split()).lower())) for e in emails)
            or any(self.google_ads.holds(_sha(p)) for p in phones),
            "facebook": any(self.facebook.holds(a) for a in identifiers.get("facebook_user_id", ())),
            "nosto": any(self.nosto.holds(e) for e in emails),
            "shopimind": any(self.shopimind.holds(c) for c in identifiers.get("shopimind_customer_id", ())),
        }

    def stop(self) -> None:
        for standin in self.all().values():
            standin.stop()


def start(clock: Callable[[], float] = time.time, hang_seconds: float = 2.0) -> StandIns:
    """Starts all five stand-ins; the caller stops them (``StandIns.stop``)."""
    kwargs: dict[str, Any] = {"clock": clock, "hang_seconds": hang_seconds}
    vendors = StandIns(GoogleAnalyticsStandIn(**kwargs), DataManagerStandIn(**kwargs),
                       FacebookStandIn(**kwargs), NostoStandIn(**kwargs), ShopimindStandIn(**kwargs))
    for standin in vendors.all().values():
        standin.start()
    return vendors


_RUNNING: list[StandIns] = []


def start_all(clock: Callable[[], float] = time.time) -> dict[str, str]:
    """Starts the process-wide set (once) and returns ``{system_id: base_url}``; see ``running()``."""
    if not _RUNNING:
        _RUNNING.append(start(clock))
    return _RUNNING[0].urls()


def running() -> StandIns:
    if not _RUNNING:
        raise RuntimeError("stand-ins are not running: call start_all() first")
    return _RUNNING[0]


def stop_all() -> None:
    while _RUNNING:
        _RUNNING.pop().stop()
