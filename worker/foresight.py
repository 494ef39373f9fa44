"""Foresight: when each open request will be served at each rate- or quota-limited system, and which
will miss its ``due_at``, and why. A pure function of the backlog, the limits and the clock.

The model is the scheduler's own: every quota window serves standard work first, earliest ``due_at``
first, then background work within its share of the quota; within a window calls go at the rate.
It counts one call per task (a vendor that needs one call per identifier takes more), and it does
not know the requests still to come, so it is a lower bound on waiting: a miss it projects is real.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from worker.core.limits import STANDARD, Capacity


@dataclass(frozen=True)
class Queued:
    """An open task waiting at a limited system."""

    request_id: str
    priority: str
    due_at: datetime
    seq: int


@dataclass(frozen=True)
class SystemLoad:
    system: str
    capacity: Capacity
    queued: Sequence[Queued]
    used_today: int = 0  # calls already spent in the current quota window, every priority
    background_used_today: int = 0


@dataclass(frozen=True)
class Projection:
    """When one request's task at one system is expected to be served, and why then."""

    request_id: str
    system: str
    priority: str
    due_at: datetime
    served_by: datetime
    ahead: int  # tasks served before it at this system
    reason: str

    @property
    def late(self) -> bool:
        return self.served_by > self.due_at


def windows(capacity: Capacity, now: datetime) -> Iterable[datetime]:
    """``now``, then the start of each following quota day (midnight in the quota's time zone)."""
    yield now
    zone = ZoneInfo(capacity.tz)
    day = now.astimezone(zone).date()
    while True:
        day += timedelta(days=1)
        yield datetime.combine(day, datetime.min.time(), zone)


def project(load: SystemLoad, now: datetime) -> list[Projection]:
    """Every queued task's projection, in the order the scheduler serves them. Empty if not limited."""
    capacity = load.capacity
    per_day, background_per_day = capacity.per_day, capacity.background_per_day
    if per_day is None or background_per_day is None or not load.queued:
        return []
    order = sorted(load.queued, key=lambda q: (q.priority != STANDARD, q.due_at, q.seq))
    standard = [q for q in order if q.priority == STANDARD]
    background = order[len(standard):]
    projections: list[Projection] = []
    served = 0
    for index, start in enumerate(windows(capacity, now)):
        if served == len(order):
            break
        total = per_day - (load.used_today if index == 0 else 0)
        reserve = background_per_day - (load.background_used_today if index == 0 else 0)
        slots = max(total, 0)
        batch = list(standard[served:served + slots])
        left = slots - len(batch)
        done_background = max(served - len(standard), 0)
        batch += background[done_background:done_background + max(min(left, reserve), 0)]
        for position, task in enumerate(batch):
            at = start + timedelta(seconds=position / capacity.per_second) if capacity.per_second else start
            projections.append(Projection(task.request_id, load.system, task.priority, task.due_at, at,
                                          served + position, _reason(load, task, served + position, at)))
        served += len(batch)
        if index > 36_600:  # a century of windows: a quota of zero left, nothing will move
            break
    return projections


def _reason(load: SystemLoad, task: Queued, ahead: int, at: datetime) -> str:
    capacity = load.capacity
    limit = f"{capacity.per_day}/day"
    if task.priority != STANDARD:
        limit += f", {capacity.background_per_day}/day for background work"
    text = f"{load.system}: {ahead} tasks ahead at {limit}: served about {at.date().isoformat()}"
    if at > task.due_at:
        text += f", {max((at - task.due_at).days, 0) + 1} day(s) after its due date"
    return text


@dataclass(frozen=True)
class RequestForecast:
    """A request's projection: served when its last limited system is, late if that is past ``due_at``."""

    request_id: str
    priority: str
    due_at: datetime
    served_by: datetime
    reason: str
    systems: tuple[str, ...]

    @property
    def late(self) -> bool:
        return self.served_by > self.due_at


def by_request(projections: Iterable[Projection]) -> list[RequestForecast]:
    """One forecast per request, latest system deciding; at-risk ones first, then by due date."""
    latest: dict[str, Projection] = {}
    systems: dict[str, list[str]] = {}
    for p in projections:
        systems.setdefault(p.request_id, []).append(p.system)
        if p.request_id not in latest or p.served_by > latest[p.request_id].served_by:
            latest[p.request_id] = p
    forecasts = [RequestForecast(p.request_id, p.priority, p.due_at, p.served_by, p.reason,
                                 tuple(sorted(systems[p.request_id]))) for p in latest.values()]
    return sorted(forecasts, key=lambda f: (not f.late, f.due_at, f.request_id))


def days_to_drain(count: int, per_day: int | None) -> float | None:
    """How many days ``count`` calls take at ``per_day`` (None: not limited)."""
    return None if per_day is None else count / per_day
