"""The order of a request's own tasks: its final steps (``_verify``, ``_package``) run once every system of the
request confirmed, and its systems once ``_identity`` did.

The claims hold that order as their rule, a probe of the siblings of each task they walk. A task that waits for
its siblings is also ``blocked``, which keeps it out of ``ix_tasks_claim``, so that claims do not walk (and probe)
every waiting final step of a burst: with 1,000 erasures in flight each claim walked every waiting ``_verify`` task
and took 4-10 ms of a loop turn, and the walk grows with the burst. Like ``held`` (``worker.store.turns``),
``blocked`` is only an index hint, never the rule: it is set at intake, kept in step whenever a request's tasks are
written with its status (``changes``), and ``unblock_missed`` releases any left behind, on the turns' timer.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from worker.receipts import FINAL_TASKS, IDENTITY_TASK
from worker.states import SystemState
from worker.store.schema import tasks

CONFIRMED = SystemState.CONFIRMED.value


def waits_for(system: str, sibling: str) -> bool:
    """Whether ``system``'s task waits until ``sibling``'s confirmed."""
    if system in FINAL_TASKS:
        return sibling not in FINAL_TASKS
    return system != IDENTITY_TASK and sibling == IDENTITY_TASK


ORDERED = FINAL_TASKS | {IDENTITY_TASK}  # a request without these has no order among its tasks


def blocked_systems(state_of: Mapping[str, str]) -> set[str]:
    """The systems of a request (system -> its task's state) that wait for a sibling not confirmed yet: ``waits_for``
    for every pair, in one pass (intake and every harvest run it for each request)."""
    if ORDERED.isdisjoint(state_of):
        return set()
    identity_open = state_of.get(IDENTITY_TASK, CONFIRMED) != CONFIRMED
    systems_open = any(state != CONFIRMED for system, state in state_of.items() if system not in FINAL_TASKS)
    return {system for system in state_of
            if (systems_open if system in FINAL_TASKS else identity_open and system != IDENTITY_TASK)}


def at_intake(systems: Collection[str]) -> set[str]:
    """The systems of a new request whose tasks start blocked: every task starts pending."""
    return blocked_systems(dict.fromkeys(systems, SystemState.PENDING.value))


def changes(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``{request_id, system, blocked}`` for each task of ``rows`` (every task of their requests, as this transaction
    leaves them) whose ``blocked`` is out of step with its siblings' states: what the store writes back."""
    by_request: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row)
    out: list[dict[str, Any]] = []
    for request_id, siblings in by_request.items():
        if all(row["system"] not in ORDERED for row in siblings):
            continue  # no order among its tasks: none ever blocked
        blocked = blocked_systems({row["system"]: row["state"] for row in siblings})
        out += [{"request_id": request_id, "system": row["system"], "blocked": row["system"] in blocked}
                for row in siblings if bool(row["blocked"]) != (row["system"] in blocked)]
    return out


def unblock_missed(conn: sa.Connection) -> int:
    """Releases blocked tasks whose siblings have all confirmed since: a write that did not keep them in step.
    Reads only the blocked tasks (``ix_tasks_blocked``), so it costs nothing when none are."""
    return int(conn.execute(_unblock_statement()).rowcount)


@functools.cache
def _unblock_statement() -> sa.Update:
    sibling = tasks.alias("sibling")
    finals = sorted(FINAL_TASKS)
    waited_for = sa.or_(  # waits_for(tasks.system, sibling.system), in SQL
        sa.and_(tasks.c.system.in_(finals), sibling.c.system.not_in(finals)),
        sa.and_(tasks.c.system.not_in([*finals, IDENTITY_TASK]), sibling.c.system == IDENTITY_TASK),
    )
    unconfirmed = sa.select(sa.literal(1)).select_from(sibling).where(
        sibling.c.request_id == tasks.c.request_id, sibling.c.state != CONFIRMED, waited_for)
    return tasks.update().where(tasks.c.blocked, ~sa.exists(unconfirmed)).values(blocked=False)
