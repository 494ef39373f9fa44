"""The backlog at limited systems, read for ``worker.foresight``: open tasks that still need a call,
and the calls already spent in the current quota window. Read-only; no personal data."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

import sqlalchemy as sa

from worker.core.limits import RESERVE_SUFFIX, Capacity, QuotaSpec
from worker.core.timefmt import aware
from worker.foresight import Queued, SystemLoad
from worker.states import SystemState
from worker.store.records import OPEN_STATUSES
from worker.store.schema import rate_quotas, requests, tasks

# A running task is being served; a task waiting on a vendor job, or failed, needs no more quota.
WAITING = (SystemState.PENDING, SystemState.RETRYING)


def queued(engine: sa.Engine, systems: Collection[str]) -> dict[str, list[Queued]]:
    """Each system's open tasks that wait for a call, with their request's priority and due date."""
    found: dict[str, list[Queued]] = {system: [] for system in systems}
    query = (sa.select(tasks.c.system, tasks.c.request_id, tasks.c.request_seq, requests.c.priority,
                       requests.c.due_at)
             .join(requests, requests.c.request_id == tasks.c.request_id)
             .where(tasks.c.system.in_(list(systems)), tasks.c.state.in_([s.value for s in WAITING]),
                    requests.c.status.in_(OPEN_STATUSES)))
    with engine.connect() as conn:
        for row in conn.execute(query):
            found[row.system].append(Queued(row.request_id, row.priority, aware(row.due_at), row.request_seq))
    return found


def used_today(engine: sa.Engine, capacity: Capacity, now: datetime) -> tuple[int, int]:
    """Calls spent in the current window of the binding quota: every priority, and background work's."""
    if not capacity.quota_keys or capacity.daily_quota is None:
        return 0, 0
    day = QuotaSpec(capacity.daily_quota, capacity.tz).day(now)
    keys = list(capacity.quota_keys)
    with engine.connect() as conn:
        used = dict(conn.execute(sa.select(rate_quotas.c.key, rate_quotas.c.used).where(
            rate_quotas.c.day == day, rate_quotas.c.key.in_(keys + [k + RESERVE_SUFFIX for k in keys]))).all())
    return (max((used.get(k, 0) for k in keys), default=0),
            max((used.get(k + RESERVE_SUFFIX, 0) for k in keys), default=0))


def loads(engine: sa.Engine, capacities: Mapping[str, Capacity], now: datetime) -> list[SystemLoad]:
    """One ``SystemLoad`` per limited system, ready for ``foresight.project``."""
    backlog = queued(engine, list(capacities))
    result = []
    for system, capacity in sorted(capacities.items()):
        used, background = used_today(engine, capacity, now)
        result.append(SystemLoad(system, capacity, backlog[system], used, background))
    return result
