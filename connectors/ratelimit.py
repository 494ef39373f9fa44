"""Client-side rate limits for vendor APIs: token buckets and daily quotas, shared per process.

Nothing here ever sleeps. A connector asks its ``Gate`` to ``admit()`` one call; when no token is
left the gate raises ``Throttled`` (or ``QuotaDeferred`` for a spent daily quota) with the number
of seconds until the next slot, and the orchestrator reschedules the work without counting an
attempt. Other systems are never held back, because the caller's thread is free at once.

Buckets and quotas live in a module-level registry keyed by name (for example
``google_analytics:property:123``), so every connector instance in the process draws from the same
budget. They hold no clock: the caller passes the time in, which keeps tests free of sleeps.

The registry is per process. With several workers, configure each worker's share of a vendor's
limit, or rely on the vendor's own 429/quota errors, which the connectors also honour.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from worker.errors import QuotaDeferred, Throttled


@dataclass(frozen=True)
class RateSpec:
    """``per_second`` tokens refill continuously up to ``burst``."""

    per_second: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


class TokenBucket:
    """Thread-safe token bucket; ``try_acquire`` returns 0 when admitted, else seconds to wait."""

    def __init__(self, spec: RateSpec) -> None:
        self._lock = threading.Lock()
        self._spec = spec
        self._tokens = spec.burst
        self._stamp: float | None = None
        self._held_until = -math.inf

    @property
    def spec(self) -> RateSpec:
        return self._spec

    def reconfigure(self, spec: RateSpec) -> None:
        with self._lock:
            self._spec = spec
            self._tokens = min(self._tokens, spec.burst)

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            elapsed = max(0.0, now - self._stamp)  # a clock that steps back refills nothing
            self._tokens = min(self._spec.burst, self._tokens + elapsed * self._spec.per_second)
        self._stamp = now if self._stamp is None else max(self._stamp, now)

    def try_acquire(self, now: float, tokens: float = 1.0) -> float:
        with self._lock:
            self._refill(now)
            if now < self._held_until:
                return self._held_until - now
            if self._tokens + 1e-6 >= tokens:  # float dust must not refuse a whole token
                self._tokens -= tokens
                return 0.0
            return (tokens - self._tokens) / self._spec.per_second

    def refund(self, tokens: float = 1.0) -> None:
        with self._lock:
            self._tokens = min(self._spec.burst, self._tokens + tokens)

    def hold(self, now: float, seconds: float) -> None:
        """The vendor said slow down (429 with Retry-After): admit nothing until then."""
        with self._lock:
            self._held_until = max(self._held_until, now + seconds)
            # Resume with a single token when the hold ends, not with a full burst: nothing refills
            # before then, because refills count from the stamp.
            self._tokens = 1.0
            self._stamp = self._held_until


class DailyQuota:
    """At most ``limit`` calls per calendar day in ``tz`` (Google resets quotas at midnight Pacific)."""

    def __init__(self, limit: int, tz: str = "UTC") -> None:
        if limit < 1:
            raise ValueError("a daily quota needs limit >= 1")
        self._lock = threading.Lock()
        self.limit = limit
        self._tz = ZoneInfo(tz)
        self._day: date | None = None
        self._used = 0

    def _roll(self, now: datetime) -> datetime:
        local = now.astimezone(self._tz)
        if local.date() != self._day:
            self._day, self._used = local.date(), 0
        return local

    def seconds_to_next_window(self, now: datetime) -> float:
        local = now.astimezone(self._tz)
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), self._tz)
        return max(1.0, (midnight - local).total_seconds())

    def try_acquire(self, now: datetime) -> float:
        with self._lock:
            self._roll(now)
            if self._used < self.limit:
                self._used += 1
                return 0.0
            return self.seconds_to_next_window(now)

    def refund(self, now: datetime) -> None:
        with self._lock:
            self._roll(now)
            self._used = max(0, self._used - 1)

    def exhaust(self, now: datetime) -> None:
        """The vendor says today's quota is spent, whatever our own count says."""
        with self._lock:
            self._roll(now)
            self._used = self.limit

    def used(self, now: datetime) -> int:
        with self._lock:
            self._roll(now)
            return self._used


class Registry:
    """Named buckets and quotas shared by every connector instance in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._quotas: dict[str, DailyQuota] = {}

    def bucket(self, key: str, spec: RateSpec) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(spec)
            elif bucket.spec != spec:
                bucket.reconfigure(spec)
            return bucket

    def quota(self, key: str, limit: int, tz: str = "UTC") -> DailyQuota:
        with self._lock:
            quota = self._quotas.get(key)
            if quota is None or quota.limit != limit:
                quota = self._quotas[key] = DailyQuota(limit, tz)
            return quota

    def clear(self) -> None:
        """Tests only: forget every bucket and quota."""
        with self._lock:
            self._buckets.clear()
            self._quotas.clear()


REGISTRY = Registry()


@dataclass(frozen=True)
class Gate:
    """The limits one vendor call must pass. ``admit`` raises rather than waits."""

    system: str
    buckets: Sequence[tuple[str, TokenBucket]]
    quotas: Sequence[tuple[str, DailyQuota]]
    now: Callable[[], datetime]

    def admit(self) -> None:
        now = self.now()
        taken: list[DailyQuota] = []
        granted: list[TokenBucket] = []
        try:
            for key, quota in self.quotas:
                if wait := quota.try_acquire(now):
                    raise QuotaDeferred(f"{self.system}: daily quota {key} is spent; next window in {wait:.0f}s",
                                        retry_after=wait)
                taken.append(quota)
            stamp = now.timestamp()
            for key, bucket in self.buckets:
                if wait := bucket.try_acquire(stamp):
                    raise Throttled(f"{self.system}: rate limit {key} reached; next slot in {wait:.2f}s",
                                    retry_after=wait)
                granted.append(bucket)
        except (QuotaDeferred, Throttled):
            # A refused call spends nothing: give back what the limits before it granted.
            for bucket in granted:
                bucket.refund()
            for quota in taken:
                quota.refund(now)
            raise

    def hold(self, seconds: float) -> None:
        stamp = self.now().timestamp()
        for _, bucket in self.buckets:
            bucket.hold(stamp, seconds)

    def exhaust_quotas(self) -> float:
        """Marks every daily quota spent; returns seconds until the earliest next window."""
        now = self.now()
        waits = []
        for _, quota in self.quotas:
            quota.exhaust(now)
            waits.append(quota.seconds_to_next_window(now))
        return min(waits, default=3600.0)
