"""Capacity planning around ``worker.foresight``: the limits of the configured systems, the at-risk
forecast from the store, its gauges, and what a sweep's emission costs per limited system.

``capacities`` builds the configured connectors to ask each limited one its quota and rate (building
makes no vendor call) and closes them again. Everything here reads; nothing writes to the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from connectors import registry
from worker import foresight, metrics
from worker.config import Settings
from worker.core.connector import Connector, ConnectorContext
from worker.core.limits import BACKGROUND, STANDARD, Capacity, Limited
from worker.store import backlog
from worker.store.ratelimits import StoreLimits

GAUGE_EVERY_SECONDS = 300.0  # a projection reads every open task at the limited systems: not every 15 s


def limited(connectors: Mapping[str, Connector]) -> dict[str, Capacity]:
    return {system: c.capacity() for system, c in connectors.items() if isinstance(c, Limited)}


def capacities(settings: Settings, engine: sa.Engine | None, clock: Callable[[], datetime], *,
               strict: bool = True) -> dict[str, Capacity]:
    """``engine``: the store whose shared limits the connectors would use (None: this process's).
    Not ``strict``: a system whose connector cannot be built here is left out instead of failing."""
    context = ConnectorContext(now=clock, limits=StoreLimits(engine) if engine is not None else None)
    built: dict[str, Connector] = {}
    try:
        for system_id, system in settings.systems.items():
            try:
                built[system_id] = registry.build(system_id, system.connector, system.settings, context)
            except Exception:
                if strict:
                    raise
        return limited(built)
    finally:
        for connector in built.values():
            connector.close()


def keeps(settings: Settings) -> dict[str, int | None]:
    return {system_id: system.keeps_data_days for system_id, system in settings.systems.items()}


def forecast(engine: sa.Engine, capacities: Mapping[str, Capacity], now: datetime,
             keeps_data_days: Mapping[str, int | None] | None = None) -> list[foresight.RequestForecast]:
    """Every open request waiting at a limited system, at-risk ones first (those a system confirms
    without a call, ``keeps_data_days``, wait for no quota and are left out)."""
    loads = backlog.loads(engine, capacities, now, keeps_data_days)
    return foresight.by_request(p for load in loads for p in foresight.project(load, now))


class Gauges:
    """``oubli_requests_at_risk`` and ``oubli_limited_backlog_days``, recomputed every few minutes."""

    def __init__(self, connectors: Mapping[str, Connector],
                 keeps_data_days: Mapping[str, int | None] | None = None) -> None:
        self.capacities = limited(connectors)
        self.keeps = dict(keeps_data_days or {})
        self.last = float("-inf")

    def refresh(self, engine: sa.Engine, now: datetime) -> None:
        if not self.capacities or time.monotonic() - self.last < GAUGE_EVERY_SECONDS:
            return
        self.last = time.monotonic()
        loads = backlog.loads(engine, self.capacities, now, self.keeps)
        for load in loads:
            projections = foresight.project(load, now)
            metrics.AT_RISK.labels(load.system).set(len({p.request_id for p in projections if p.late}))
            for priority in (STANDARD, BACKGROUND):
                count = sum(1 for q in load.queued if q.priority == priority)
                per_day = load.capacity.per_day if priority == STANDARD else load.capacity.background_per_day
                days = foresight.days_to_drain(count, per_day)
                metrics.BACKLOG_DAYS.labels(load.system, priority).set(days or 0.0)


@dataclass(frozen=True)
class SystemCost:
    """What a sweep's emission costs one limited system: tasks, and days at background work's share."""

    system: str
    tasks: int  # that need a call
    per_day: int | None
    days: float | None
    without_call: int = 0  # confirmed without a call: the system keeps data for less than the subject's idle time

    def describe(self) -> str:
        text = f"{self.tasks:,} {self.system} erasures"
        if self.days is not None:
            text += f", about {self.days:,.1f} days at the reserved quota ({self.per_day:,}/day)"
        if self.without_call:
            text += f"; {self.without_call:,} more need no call (older than the data {self.system} keeps)"
        return text


def sweep_cost(tasks_per_system: Mapping[str, int], capacities: Mapping[str, Capacity],
               without_call: Mapping[str, int] | None = None) -> list[SystemCost]:
    """At least one call per task: a vendor that needs one call per identifier takes longer."""
    costs = []
    for system, count in sorted(tasks_per_system.items()):
        capacity = capacities.get(system)
        if capacity is None or count == 0:
            continue
        free = (without_call or {}).get(system, 0)
        per_day = capacity.background_per_day
        costs.append(SystemCost(system, count - free, per_day, foresight.days_to_drain(count - free, per_day), free))
    return costs
