"""Rate limits as values: rates with a burst (GCRA), daily quotas, and the ``Limits`` protocol.

Limits are named and live in a backend, so every gate naming one draws from the same budget:
``worker.store.ratelimits.StoreLimits`` (every worker on one store) or ``connectors.ratelimit.Registry``
(one process). A rate is one number per name (the theoretical arrival time), so the shared version is
one conditional upsert; clocks come from the caller. The algorithm: docs/architecture.md."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

EPSILON = 1e-6  # float dust in sums of 1/rate must not refuse a whole slot
MAX_KEY = 255  # the store's key columns


@dataclass(frozen=True)
class RateSpec:
    """``per_second`` calls on average, up to ``burst`` at once after a quiet spell."""

    per_second: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and burst >= 1")

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        return (self.burst - 1.0) / self.per_second

    def wait(self, tat: float | None, now: float) -> float:
        """Seconds until a call at ``now`` may pass (0: now), given the name's ``tat``."""
        if tat is None:
            return 0.0
        late = tat - self.tolerance - now
        return late if late > EPSILON else 0.0

    def next_tat(self, tat: float | None, now: float) -> float:
        return max(tat if tat is not None else now, now) + self.interval

    def held_tat(self, tat: float | None, until: float) -> float:
        """After a hold until ``until``: nothing passes before it, then a single call, not a burst."""
        return max(tat if tat is not None else until, until + self.tolerance)


@dataclass(frozen=True)
class QuotaSpec:
    """At most ``limit`` calls per calendar day in ``tz`` (Google resets quotas at midnight Pacific)."""

    limit: int
    tz: str = "UTC"
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a daily quota needs limit >= 1")
        object.__setattr__(self, "zone", ZoneInfo(self.tz))  # raises for an unknown zone

    def day(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def seconds_to_next_window(self, now: datetime) -> float:
        local = now.astimezone(self.zone)
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), self.zone)
        # Timestamps, not wall-clock datetimes: a day with a DST change lasts 23 or 25 hours.
        return max(1.0, midnight.timestamp() - now.timestamp())


STANDARD, BACKGROUND = "standard", "background"
RESERVE_SUFFIX = ":background"  # the name of a quota's background share: ``<quota>:background``
RESERVE_SPENT = "background_reserve_spent"  # the error code of a background call the reserve refused

# The priority of the call this thread is making. The executor sets it from the request before each
# connector call, so that every gate of the call spends a background call from the reserve-limited
# share without each connector passing the request down to its HTTP calls.
_PRIORITY: ContextVar[str] = ContextVar("oubli_call_priority", default=STANDARD)


def call_priority() -> str:
    return _PRIORITY.get()


def set_call_priority(priority: str) -> None:
    """For the executor's pool threads: every call sets it, so a previous call's never lingers."""
    _PRIORITY.set(BACKGROUND if priority == BACKGROUND else STANDARD)


@contextmanager
def prioritized(priority: str) -> Iterator[None]:
    token = _PRIORITY.set(BACKGROUND if priority == BACKGROUND else STANDARD)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def background_quotas(quotas: Sequence[tuple[str, QuotaSpec]], share: float) -> list[tuple[str, QuotaSpec]]:
    """The reserve: a background call also spends ``<quota>:background``, whose limit is ``share`` of
    the quota's, so background work never takes the rest of a day's quota from standard work."""
    return [(key + RESERVE_SUFFIX, QuotaSpec(reserved(quota.limit, share), quota.tz)) for key, quota in quotas]


def reserved(limit: int, share: float) -> int:
    """Calls a day background work may spend of a ``limit``: at least one, so a sweep always moves."""
    return max(1, math.floor(limit * share + EPSILON))


@dataclass(frozen=True)
class Capacity:
    """What a limited system can do, for planning (``worker.foresight``): its binding daily quota, the
    share of it background work may spend, and its sustained rate. ``quota_keys`` name the quotas a
    call spends, so today's use can be read from the ``Limits`` backend."""

    daily_quota: int | None
    per_second: float | None
    background_share: float = 1.0
    tz: str = "UTC"
    quota_keys: tuple[str, ...] = ()

    @property
    def per_day(self) -> int | None:
        """Calls a day, all priorities: the quota, or what the rate allows in 24 hours."""
        by_rate = math.floor(self.per_second * 86400) if self.per_second else None
        found = [n for n in (self.daily_quota, by_rate) if n is not None]
        return min(found) if found else None

    @property
    def background_per_day(self) -> int | None:
        per_day = self.per_day
        if per_day is None:
            return None
        if self.daily_quota is None:
            return per_day
        return min(per_day, reserved(self.daily_quota, self.background_share))


Buckets = Sequence[tuple[str, RateSpec]]
Quotas = Sequence[tuple[str, QuotaSpec]]


@dataclass(frozen=True)
class Refusal:
    """Why ``admit`` said no: a ``rate`` or ``quota`` named ``key``, or the backend is ``unavailable``."""

    kind: Literal["rate", "quota", "unavailable"]
    key: str
    wait: float


class Limits(Protocol):
    """Where named limits live.

    ``admit`` is all or nothing: it spends one call of every quota and every rate, or, if any of
    them refuses, nothing at all, and says which refused and for how long. It never sleeps; a
    store-backed one runs one short transaction. ``hold`` admits nothing under the ``buckets``
    names until ``now + seconds`` (a vendor's ``Retry-After``); ``exhaust`` marks today's quotas
    spent (the vendor says so). ``hold`` and ``exhaust`` never raise for an unreachable store.
    """

    def admit(self, buckets: Buckets, quotas: Quotas, now: datetime) -> Refusal | None: ...

    def hold(self, buckets: Buckets, now: datetime, seconds: float) -> None: ...

    def exhaust(self, quotas: Quotas, now: datetime) -> None: ...


@runtime_checkable
class Limited(Protocol):
    """A connector whose system has rate or quota limits says what they are, for planning."""

    def capacity(self) -> Capacity: ...
