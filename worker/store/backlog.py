"""The backlog at limited systems, read for ``worker.foresight``: open tasks that still need a call,
and the calls already spent in the current quota window. Read-only; no personal data."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime

import sqlalchemy as sa

from worker.core.limits import BACKGROUND, RESERVE_SUFFIX, Capacity, QuotaSpec
from worker.core.timefmt import aware
from worker.foresight import Queued, SystemLoad
from worker.states import SystemState
from worker.store.records import OPEN_STATUSES
from worker.store.schema import rate_quotas, requests, tasks

# A running task is being served; a task waiting on a vendor job, or failed, needs no more quota.
WAITING = (SystemState.PENDING, SystemState.RETRYING)


def queued(engine: sa.Engine, systems: Collection[str], *, now: datetime | None = None,
           keeps_data_days: Mapping[str, int | None] | None = None) -> dict[str, list[Queued]]:
    """Each system's open tasks that wait for a call, with their request's priority and due date.

    With ``keeps_data_days``, a background erasure the system will confirm without a call (its
    subject idle for longer, ``worker.retention.vendorkeep``) waits for no quota and is left out.
    """
    keeps = {s: d for s, d in (keeps_data_days or {}).items() if d is not None and s in systems}
    found: dict[str, list[Queued]] = {system: [] for system in systems}
    query = (sa.select(tasks.c.system, tasks.c.request_id, tasks.c.request_seq, requests.c.priority,
                       requests.c.due_at, requests.c.kind,
                       # the subject is read only where it can spare a call
                       sa.case((sa.and_(requests.c.priority == BACKGROUND, tasks.c.system.in_(list(keeps))),
                                requests.c.subject_json), else_=sa.null()).label("subject_json"))
             .join(requests, requests.c.request_id == tasks.c.request_id)
             .where(tasks.c.system.in_(list(systems)), tasks.c.state.in_([s.value for s in WAITING]),
                    requests.c.status.in_(OPEN_STATUSES)))
    with engine.connect() as conn:
        for row in conn.execute(query):
            if row.subject_json is not None and now is not None and row.kind == "erasure":
                idle = _idle_days(row.subject_json, now)
                if idle is not None and idle > keeps[row.system]:
                    continue
            found[row.system].append(Queued(row.request_id, row.priority, aware(row.due_at), row.request_seq))
    return found


def _idle_days(subject_json: str, now: datetime) -> float | None:
    last = json.loads(subject_json).get("last_activity_at")
    return (now - aware(datetime.fromisoformat(last))).total_seconds() / 86400 if last else None


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


def loads(engine: sa.Engine, capacities: Mapping[str, Capacity], now: datetime,
          keeps_data_days: Mapping[str, int | None] | None = None) -> list[SystemLoad]:
    """One ``SystemLoad`` per limited system, ready for ``foresight.project``."""
    backlog = queued(engine, list(capacities), now=now, keeps_data_days=keeps_data_days)
    result = []
    for system, capacity in sorted(capacities.items()):
        used, background = used_today(engine, capacity, now)
        result.append(SystemLoad(system, capacity, backlog[system], used, background))
    return result
