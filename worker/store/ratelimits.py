"""Vendor rate limits shared by every worker on one store: ``Limits`` from ``worker.core.limits``.

One ``admit`` is one short transaction of conditional upserts (quotas then rates, sorted by name, so
admits never deadlock); a refused call spends nothing. An unreachable store refuses the call
(``Throttled``), so a vendor is never called unmetered. Why it holds under concurrency:
docs/architecture.md."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker.core.limits import EPSILON, Buckets, Quotas, Refusal
from worker.store.schema import rate_buckets, rate_quotas

log = structlog.get_logger("oubli.ratelimits")

# The store is down, restarting, locked for too long, or the pool is exhausted: try again later.
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
T = TypeVar("T")


def _by_name(items: Sequence[tuple[str, T]]) -> list[tuple[str, T]]:
    return sorted(items, key=lambda item: item[0])


class StoreLimits:
    """``Limits`` in the store's ``rate_buckets`` and ``rate_quotas`` tables, on the store's engine."""

    def __init__(self, engine: sa.Engine, *, retry_seconds: float = 5.0) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        self._insert: Any = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def admit(self, buckets: Buckets, quotas: Quotas, now: datetime) -> Refusal | None:
        try:
            with self.engine.connect() as conn:
                refusal = self._admit(conn, buckets, quotas, now)
                if refusal is None:
                    conn.commit()
                else:
                    conn.rollback()
                return refusal
        except UNAVAILABLE as exc:
            log.warning("rate_limits_unavailable", during="admit", error_type=type(exc).__name__)
            return Refusal("unavailable", "store", self.retry_seconds)

    def _admit(self, conn: sa.Connection, buckets: Buckets, quotas: Quotas, now: datetime) -> Refusal | None:
        for key, quota in _by_name(quotas):
            day = quota.day(now)
            used = conn.execute(self._insert(rate_quotas).values(key=key, day=day, used=1).on_conflict_do_update(
                index_elements=[rate_quotas.c.key, rate_quotas.c.day], set_={"used": rate_quotas.c.used + 1},
                where=rate_quotas.c.used < quota.limit,
            ).returning(rate_quotas.c.used)).scalar()
            if used is None:
                return Refusal("quota", key, quota.seconds_to_next_window(now))
            if used == 1:  # the first call of a day: forget the days before
                conn.execute(rate_quotas.delete().where(rate_quotas.c.key == key, rate_quotas.c.day < day))
        stamp = now.timestamp()
        tat = rate_buckets.c.tat
        for key, rate in _by_name(buckets):
            passed = conn.execute(self._insert(rate_buckets).values(key=key, tat=stamp + rate.interval)
                                  .on_conflict_do_update(
                index_elements=[rate_buckets.c.key],
                set_={"tat": sa.case((tat > stamp, tat), else_=sa.literal(stamp, sa.Double)) + rate.interval},
                where=tat - rate.tolerance - stamp <= EPSILON,  # RateSpec.wait, in SQL
            ).returning(tat)).first()
            if passed is None:
                current = conn.execute(sa.select(tat).where(rate_buckets.c.key == key)).scalar_one()
                return Refusal("rate", key, max(rate.wait(current, stamp), EPSILON))
        return None

    def hold(self, buckets: Buckets, now: datetime, seconds: float) -> None:
        until = now.timestamp() + seconds
        tat = rate_buckets.c.tat
        try:
            with self.engine.begin() as conn:
                for key, rate in _by_name(buckets):
                    held = until + rate.tolerance  # RateSpec.held_tat, in SQL
                    conn.execute(self._insert(rate_buckets).values(key=key, tat=held).on_conflict_do_update(
                        index_elements=[rate_buckets.c.key],
                        set_={"tat": sa.case((tat > held, tat), else_=sa.literal(held, sa.Double))}))
        except UNAVAILABLE as exc:
            log.warning("rate_limits_unavailable", during="hold", error_type=type(exc).__name__)

    def exhaust(self, quotas: Quotas, now: datetime) -> None:
        used = rate_quotas.c.used
        try:
            with self.engine.begin() as conn:
                for key, quota in _by_name(quotas):
                    conn.execute(self._insert(rate_quotas).values(key=key, day=quota.day(now), used=quota.limit)
                                 .on_conflict_do_update(
                        index_elements=[rate_quotas.c.key, rate_quotas.c.day],
                        set_={"used": sa.case((used > quota.limit, used), else_=quota.limit)}))
        except UNAVAILABLE as exc:
            log.warning("rate_limits_unavailable", during="exhaust", error_type=type(exc).__name__)
