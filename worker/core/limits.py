"""Rate limits as values: rates with a burst, daily quotas, and the ``Limits`` protocol that keeps them.

Limits are named (for example ``google_analytics:property_id:123``) and live in a ``Limits`` backend,
so every gate that names a limit draws from the same budget: ``worker.store.ratelimits.StoreLimits``
shares it across every worker on one store, ``connectors.ratelimit.Registry`` keeps it in one process.

A rate is a GCRA ("generic cell rate algorithm"), the token bucket written as one number per name:
the theoretical arrival time ``tat``. A call at ``now`` is admitted iff ``tat - tolerance <= now``
(``tolerance`` = (burst - 1) / rate), and then ``tat = max(tat, now) + 1/rate``. So in any window
of ``w`` seconds at most ``burst + rate × w`` calls pass, whatever the callers' clocks. One number
makes the shared version a single conditional upsert. Clocks come from the caller: tests never
sleep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, Protocol
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
