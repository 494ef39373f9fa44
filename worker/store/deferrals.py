"""When background work has spent its share of a system's daily quota, its other tasks there wait
for the next window in one statement, instead of each being claimed, refused and deferred in turn.

Only the due time of ``pending``/``retrying`` tasks of ``background`` requests moves (never a state,
never a standard request), so there is no transition to audit. The version moves on too, so a claim
that read the row before this update fails its compare-and-set and reads it again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

from worker import states
from worker.core.limits import BACKGROUND, RESERVE_SPENT
from worker.states import SystemState
from worker.store.records import OPEN_STATUSES, ClaimedTask, Finished
from worker.store.schema import requests, tasks

log = structlog.get_logger("oubli.scheduling")


def defer_background(engine: sa.Engine, system: str, until: datetime) -> int:
    """Moves every waiting background task of ``system`` due before ``until`` to ``until``; returns how many."""
    background = sa.select(requests.c.request_id).where(requests.c.priority == BACKGROUND,
                                                        requests.c.status.in_(OPEN_STATUSES))
    with engine.begin() as conn:
        moved: int = conn.execute(tasks.update().where(
            tasks.c.system == system, tasks.c.state.in_([SystemState.PENDING, SystemState.RETRYING]),
            tasks.c.next_attempt_at < until, tasks.c.request_id.in_(background),
        ).values(next_attempt_at=until, version=tasks.c.version + 1)).rowcount
    return moved


class ReserveDeferral:
    """An executor ``on_outcome`` observer: a background call the reserve refused defers its siblings."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def __call__(self, task: ClaimedTask, event: states.Event, seconds: float, finished: Finished | None) -> None:
        if not (isinstance(event, states.Fail) and event.code == RESERVE_SPENT and event.retry_after):
            return
        until = self.clock() + timedelta(seconds=event.retry_after)
        moved = defer_background(self.engine, task.system, until)
        log.info("background_deferred", system=task.system, tasks=moved, until=until.isoformat())
