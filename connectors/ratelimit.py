"""Client-side rate limits for vendor APIs: the ``Gate`` a connector calls, and an in-process ``Limits``.

Nothing sleeps: ``admit()`` raises ``Throttled`` (or ``QuotaDeferred``) with the seconds until the next
slot, and the orchestrator reschedules without counting an attempt. The worker passes the store's
backend in the ``ConnectorContext``; without one, ``REGISTRY`` keeps the limits in this process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from worker.core.errors import QuotaDeferred, Throttled
from worker.core.limits import (
    BACKGROUND,
    MAX_KEY,
    RESERVE_SPENT,
    RESERVE_SUFFIX,
    Buckets,
    Capacity,
    Limits,
    Quotas,
    Refusal,
    background_quotas,
    call_priority,
)


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
    """The limits one vendor call must pass. ``admit`` raises rather than waits.

    A call made for ``background`` work (``worker.core.limits.call_priority``) also spends each
    quota's reserve-limited share (``background_share`` of it), so the rest stays for standard work.
    """

    system: str
    buckets: Buckets
    quotas: Quotas
    now: Callable[[], datetime]
    limits: Limits = REGISTRY
    background_share: float = 1.0

    def __post_init__(self) -> None:
        longest = max((len(key) for key, _ in (*self.buckets, *self.quotas)), default=0)
        if longest + len(RESERVE_SUFFIX) > MAX_KEY:
            raise ValueError(f"{self.system}: a rate-limit name is longer than {MAX_KEY - len(RESERVE_SUFFIX)} "
                             "characters")
        if not 0 < self.background_share <= 1:
            raise ValueError(f"{self.system}: background_share must be in (0, 1]")

    def admit(self) -> None:
        quotas = self.quotas
        if self.quotas and self.background_share < 1 and call_priority() == BACKGROUND:
            quotas = (*self.quotas, *background_quotas(self.quotas, self.background_share))
        refusal = self.limits.admit(self.buckets, quotas, self.now())
        if refusal is None:
            return
        key, wait = refusal.key, refusal.wait
        if refusal.kind == "quota" and key.endswith(RESERVE_SUFFIX):
            raise QuotaDeferred(f"{self.system}: background work spent its share of daily quota "
                                f"{key.removesuffix(RESERVE_SUFFIX)}; the rest is kept for standard requests; "
                                f"next window in {wait:.0f}s", retry_after=wait, code=RESERVE_SPENT)
        if refusal.kind == "quota":
            raise QuotaDeferred(f"{self.system}: daily quota {key} is spent; next window in {wait:.0f}s",
                                retry_after=wait)
        if refusal.kind == "unavailable":
            raise Throttled(f"{self.system}: the shared rate limits are unavailable; next try in {wait:.0f}s",
                            retry_after=wait, code="limits_unavailable")
        raise Throttled(f"{self.system}: rate limit {key} reached; next slot in {wait:.2f}s", retry_after=wait)

    def hold(self, seconds: float) -> None:
        self.limits.hold(self.buckets, self.now(), seconds)

    def capacity(self) -> Capacity:
        """The binding quota and rate, for planning: a call spends every quota and every rate."""
        return Capacity(
            daily_quota=min((quota.limit for _, quota in self.quotas), default=None),
            per_second=min((rate.per_second for _, rate in self.buckets), default=None),
            background_share=self.background_share if self.quotas else 1.0,
            tz=self.quotas[0][1].tz if self.quotas else "UTC",
            quota_keys=tuple(key for key, _ in self.quotas),
        )

    def exhaust_quotas(self) -> float:
        """Marks every daily quota spent; returns seconds until the earliest next window."""
        now = self.now()
        self.limits.exhaust(self.quotas, now)
        return min((quota.seconds_to_next_window(now) for _, quota in self.quotas), default=3600.0)
