"""Test helpers around the stand-ins: a fake clock, an in-memory identity lookup, subjects, and one
conformance ``Harness`` per vendor (see ``tests/conformance.py``)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors import registry
from connectors.ratelimit import REGISTRY
from devkit.standins import ADS_LIST_ID, GA_KINDS, GA_PROPERTY_ID, settings_for
from devkit.standins.base import StandIn
from devkit.standins.facebook import FacebookStandIn
from devkit.standins.google import DataManagerStandIn, GoogleAnalyticsStandIn
from devkit.standins.nosto import NostoStandIn
from devkit.standins.shopimind import ShopimindStandIn
from worker.core.connector import CallResult, Connector, ConnectorContext, Result, Subject
from worker.core.errors import Throttled

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
GENEROUS = {"rate_limit": {"per_second": 100_000, "burst": 100_000}}
_serial = itertools.count(100_000)


@pytest.fixture(autouse=True)
def fresh_limiters() -> Iterator[None]:
    """Rate-limit buckets are process-wide: every test starts with full ones."""
    REGISTRY.clear()
    yield
    REGISTRY.clear()


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


class MemoryIdentity:
    """An ``IdentityLookup`` over a dict: customer id → kind → identifiers."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, tuple[str, ...]]] = {}
        self.lookups = 0

    def add(self, customer_id: str, kind: str, *values: str) -> None:
        kinds = self.known.setdefault(customer_id, {})
        kinds[kind] = kinds.get(kind, ()) + values

    def identifiers(self, subject: Subject, kind: str) -> tuple[str, ...]:
        self.lookups += 1
        return self.known.get(subject.customer_id, {}).get(kind, ())


def drive(connector: Connector, subject: Subject, clock: FakeClock, first: Callable[[], CallResult],
          max_steps: int = 100) -> Result:
    """What the orchestrator does, on a fake clock: wait out ``Throttled`` and ``Pending``, then
    call again (``poll`` for a pending job)."""
    call, ref = first, None
    for _ in range(max_steps):
        try:
            outcome = call()
        except Throttled as exc:
            clock.advance(exc.retry_after or 0.001)
            continue
        if isinstance(outcome, Result):
            return outcome
        clock.advance(outcome.poll_after)
        ref = outcome.vendor_ref
        call = functools.partial(connector.poll, subject, ref)
    raise AssertionError("the job never settled")


def serial() -> str:
    return str(next(_serial))


def make_subject(*, emails: Sequence[str] = (), phones: Sequence[str] = (),
                 identifiers: Mapping[str, Sequence[str]] | None = None, customer_id: str | None = None) -> Subject:
    return Subject(request_id=str(uuid.uuid4()), subject_ref="hmac-sha256:test",
                   customer_id=customer_id or f"C-{serial()}", emails=tuple(emails), phones=tuple(phones),
                   identifiers={k: tuple(v) for k, v in (identifiers or {}).items()})


def build(system: str, standin: StandIn, clock: FakeClock, identity: MemoryIdentity | None = None,
          **overrides: Any) -> Connector:
    context = ConnectorContext(now=clock.now, identity=identity)
    return registry.build(system, system, settings_for(system, standin, **overrides), context)


class VendorHarness:
    """Shared part of the conformance harnesses: failures come from the stand-in."""

    system = ""

    def __init__(self, standin: StandIn, clock: FakeClock | None = None, **overrides: Any) -> None:
        self.standin = standin
        self.clock = clock or FakeClock()
        self.identity = MemoryIdentity()
        self.connector = build(self.system, standin, self.clock, self.identity, **{**GENEROUS, **overrides})

    def subject_with_data(self) -> Subject:
        raise NotImplementedError

    def subject_without_data(self) -> Subject:
        raise NotImplementedError

    def holds_personal_data(self, subject: Subject) -> bool:
        raise NotImplementedError

    def transient_failure(self) -> contextlib.AbstractContextManager[None]:
        return self.standin.failing(503)

    def permanent_failure(self) -> contextlib.AbstractContextManager[None]:
        return self.standin.refusing_credentials()


class GoogleAnalyticsHarness(VendorHarness):
    system = "google_analytics"
    standin: GoogleAnalyticsStandIn

    def subject_with_data(self) -> Subject:
        client_id, user_id = f"{serial()}.{serial()}", f"U-{serial()}"
        subject = make_subject(identifiers={"ga_client_id": [client_id]})
        self.identity.add(subject.customer_id, "ga_user_id", user_id)  # known only to the orders database
        self.standin.seed(GA_PROPERTY_ID, "CLIENT_ID", client_id)
        self.standin.seed(GA_PROPERTY_ID, "USER_ID", user_id)
        return subject

    def subject_without_data(self) -> Subject:
        return make_subject(identifiers={"ga_client_id": [f"{serial()}.{serial()}"]})

    def holds_personal_data(self, subject: Subject) -> bool:
        return any(self.standin.holds(id_type, value) for kind, id_type in GA_KINDS.items()
                   for value in (*subject.ids(kind), *self.identity.identifiers(subject, kind)))


class GoogleAdsHarness(VendorHarness):
    system = "google_ads"
    standin: DataManagerStandIn

    def subject_with_data(self) -> Subject:
        from connectors.google_ads import sha256_hex

        email, phone = f"Marie.Dupont{serial()}@Example.fr ", f"+3361{serial()}"
        self.standin.seed(ADS_LIST_ID, sha256_hex(email.strip().lower()), sha256_hex(phone))
        return make_subject(emails=[email], phones=[phone])

    def subject_without_data(self) -> Subject:
        return make_subject(emails=[f"nobody{serial()}@example.org"])

    def holds_personal_data(self, subject: Subject) -> bool:
        from connectors.google_ads import sha256_hex

        digests = [sha256_hex(e.strip().lower()) for e in subject.emails] + [sha256_hex(p) for p in subject.phones]
        return any(self.standin.holds(digest) for digest in digests)


class FacebookHarness(VendorHarness):
    system = "facebook"
    standin: FacebookStandIn

    def subject_with_data(self) -> Subject:
        subject = make_subject()
        asid = serial()
        self.identity.add(subject.customer_id, "facebook_user_id", asid)
        self.standin.seed(asid)
        return subject

    def subject_without_data(self) -> Subject:
        return make_subject(identifiers={"facebook_user_id": [serial()]})

    def holds_personal_data(self, subject: Subject) -> bool:
        ids = (*subject.ids("facebook_user_id"), *self.identity.identifiers(subject, "facebook_user_id"))
        return any(self.standin.holds(asid) for asid in ids)


class NostoHarness(VendorHarness):
    system = "nosto"
    standin: NostoStandIn

    def subject_with_data(self) -> Subject:
        email = f"marie.dupont+{serial()}@example.fr"
        self.standin.seed(email)
        return make_subject(emails=[email])

    def subject_without_data(self) -> Subject:
        return make_subject(emails=[f"nobody{serial()}@example.org"])

    def holds_personal_data(self, subject: Subject) -> bool:
        return any(self.standin.holds(email) for email in subject.emails)


class ShopimindHarness(VendorHarness):
    system = "shopimind"
    standin: ShopimindStandIn

    def subject_with_data(self) -> Subject:
        first, second = f"cust_{serial()}", f"cust_{serial()}"
        subject = make_subject(emails=["marie@example.fr"], identifiers={"shopimind_customer_id": [first]})
        self.identity.add(subject.customer_id, "shopimind_customer_id", second)
        self.standin.seed(first, email="marie@example.fr")
        self.standin.seed(second, email="marie@example.fr")
        return subject

    def subject_without_data(self) -> Subject:
        return make_subject(identifiers={"shopimind_customer_id": [f"cust_{serial()}"]})

    def holds_personal_data(self, subject: Subject) -> bool:
        ids = (*subject.ids("shopimind_customer_id"), *self.identity.identifiers(subject, "shopimind_customer_id"))
        return any(self.standin.holds(customer_id) for customer_id in ids)


HARNESSES: dict[str, type[VendorHarness]] = {h.system: h for h in (
    GoogleAnalyticsHarness, GoogleAdsHarness, FacebookHarness, NostoHarness, ShopimindHarness)}
STANDINS: dict[str, type[StandIn]] = {"google_analytics": GoogleAnalyticsStandIn, "google_ads": DataManagerStandIn,
                                      "facebook": FacebookStandIn, "nosto": NostoStandIn,
                                      "shopimind": ShopimindStandIn}


def vendor_harness(system: str, *, standin_options: Mapping[str, Any] | None = None,
                   **overrides: Any) -> Iterator[VendorHarness]:
    """``system``'s stand-in, started, and its harness, for a fixture to yield from; both are closed
    when the fixture ends. ``overrides`` go to the connector settings."""
    standin = STANDINS[system](**(standin_options or {}))
    standin.start()
    harness = HARNESSES[system](standin, FakeClock(), **overrides)
    try:
        yield harness
    finally:
        harness.connector.close()
        standin.stop()
