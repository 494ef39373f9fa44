"""Client-side rate limits for vendor APIs: rates with a burst, and daily quotas, shared by name.

Nothing here ever sleeps. A connector asks its ``Gate`` to ``admit()`` one call; when a limit says
not yet, the gate raises ``Throttled`` (or ``QuotaDeferred`` for a spent daily quota) with the
number of seconds until the next slot, and the orchestrator reschedules the work without counting
an attempt. Other systems are never held back, because the caller's thread is free at once.

Limits are named (for example ``google_analytics:property_id:123``) and live in a ``Limits``
backend, so every gate that names a limit draws from the same budget:

* the worker passes the store-backed backend (``worker.store.ratelimits.StoreLimits``) in the
  ``ConnectorContext``, so the budget is shared by every worker on one store: N workers together
  send no more than the vendor's limit, a 429's ``Retry-After`` holds the whole fleet back, and a
  daily count survives restarts;
* without one (unit tests, the conformance suite, tools), ``REGISTRY`` keeps them in this process.

A rate is a GCRA ("generic cell rate algorithm"), the token bucket written as one number per name:
the theoretical arrival time ``tat``. A call at ``now`` is admitted iff ``tat - tolerance <= now``
(``tolerance`` = (burst - 1) / rate), and then ``tat = max(tat, now) + 1/rate``. So in any window
of ``w`` seconds at most ``burst + rate × w`` calls pass, whatever the callers' clocks. One number
makes the shared version a single conditional upsert. Clocks come from the caller: tests never
sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from worker.errors import QuotaDeferred, Throttled

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


class Registry:
    """``Limits`` kept in this process, for what has no store. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tats: dict[str, float] = {}
        self._used: dict[str, tuple[date, int]] = {}

    def _count(self, key: str, day: date) -> int:
        seen, used = self._used.get(key, (day, 0))
        return used if seen == day else 0

    def admit(self, buckets: Buckets, quotas: Quotas, now: datetime) -> Refusal | None:
        stamp = now.timestamp()
        with self._lock:
            for key, quota in quotas:
                if self._count(key, quota.day(now)) >= quota.limit:
                    return Refusal("quota", key, quota.seconds_to_next_window(now))
            for key, rate in buckets:
                if wait := rate.wait(self._tats.get(key), stamp):
                    return Refusal("rate", key, wait)
            for key, quota in quotas:
                day = quota.day(now)
                self._used[key] = (day, self._count(key, day) + 1)
            for key, rate in buckets:
                self._tats[key] = rate.next_tat(self._tats.get(key), stamp)
        return None

    def hold(self, buckets: Buckets, now: datetime, seconds: float) -> None:
        until = now.timestamp() + seconds
        with self._lock:
            for key, rate in buckets:
                self._tats[key] = rate.held_tat(self._tats.get(key), until)

    def exhaust(self, quotas: Quotas, now: datetime) -> None:
        with self._lock:
            for key, quota in quotas:
                day = quota.day(now)
                self._used[key] = (day, max(self._count(key, day), quota.limit))

    def used(self, key: str, now: datetime, tz: str = "UTC") -> int:
        """Tests only: calls counted today under ``key``."""
        with self._lock:
            return self._count(key, now.astimezone(ZoneInfo(tz)).date())

    def clear(self) -> None:
        """Tests only: forget every rate and quota."""
        with self._lock:
            self._tats.clear()
            self._used.clear()


REGISTRY = Registry()


@dataclass(frozen=True)
class Gate:
    """The limits one vendor call must pass. ``admit`` raises rather than waits."""

    system: str
    buckets: Buckets
    quotas: Quotas
    now: Callable[[], datetime]
    limits: Limits = REGISTRY

    def __post_init__(self) -> None:
        if any(len(key) > MAX_KEY for key, _ in (*self.buckets, *self.quotas)):
            raise ValueError(f"{self.system}: a rate-limit name is longer than {MAX_KEY} characters")

    def admit(self) -> None:
        refusal = self.limits.admit(self.buckets, self.quotas, self.now())
        if refusal is None:
            return
        key, wait = refusal.key, refusal.wait
        if refusal.kind == "quota":
            raise QuotaDeferred(f"{self.system}: daily quota {key} is spent; next window in {wait:.0f}s",
                                retry_after=wait)
        if refusal.kind == "unavailable":
            raise Throttled(f"{self.system}: the shared rate limits are unavailable; next try in {wait:.0f}s",
                            retry_after=wait, code="limits_unavailable")
        raise Throttled(f"{self.system}: rate limit {key} reached; next slot in {wait:.2f}s", retry_after=wait)

    def hold(self, seconds: float) -> None:
        self.limits.hold(self.buckets, self.now(), seconds)

    def exhaust_quotas(self) -> float:
        """Marks every daily quota spent; returns seconds until the earliest next window."""
        now = self.now()
        self.limits.exhaust(self.quotas, now)
        return min((quota.seconds_to_next_window(now) for _, quota in self.quotas), default=3600.0)
