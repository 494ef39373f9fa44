"""A subject's turns: the tasks of a request recorded behind an earlier open request of its subject are held.

Per-subject order (SPEC invariant 7) is the claim's gate: a task is never claimed while an earlier request of
its subject is open. ``held`` keeps such tasks out of ``ix_tasks_claim`` as well, so that a claim does not
walk (and probe) every one of them: a subject with thousands of open requests otherwise cost every claim
of every request most of a second. Holding is only an index hint, never the rule, so it may be wrong one way
safely: a task recorded unheld behind an open request (two workers recorded the two at once) is still gated.
The other way, a request held after its turn came (the one ahead ended in a transaction that could not yet
see it), is what ``release_missed_turns`` finds, on a timer.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa

from worker.store.records import OPEN_STATUSES
from worker.store.schema import requests, tasks
from worker.store.sets import among_bound


def held_at_intake(conn: sa.Connection, subject_refs: Sequence[str]) -> list[bool]:
    """For requests about to be recorded, in this order: whether each has an earlier open request of its
    subject, in the store or earlier in ``subject_refs`` (seq follows the batch's order)."""
    ahead = set(conn.execute(_ahead_statement(conn.dialect.name), {"subjects": sorted(set(subject_refs))})
                .scalars()) if subject_refs else set()
    held = []
    for subject_ref in subject_refs:
        held.append(subject_ref in ahead)
        ahead.add(subject_ref)
    return held


@functools.cache
def _ahead_statement(dialect: str) -> sa.Select[Any]:
    """Which of these subjects have an open request (built once: every intake batch runs it)."""
    return (sa.select(requests.c.subject_ref).distinct()
            .where(among_bound(dialect, requests.c.subject_ref, "subjects"), requests.c.status.in_(OPEN_STATUSES)))


def _release_by(subjects: sa.ColumnElement[bool]) -> sa.Update:
    """Releases the held tasks of the earliest open request of each subject ``subjects`` selects: its turn."""
    turns = (sa.select(sa.func.min(requests.c.seq))
             .where(subjects, requests.c.status.in_(OPEN_STATUSES))
             .group_by(requests.c.subject_ref))
    return tasks.update().where(tasks.c.held, tasks.c.request_seq.in_(turns)).values(held=False)


def release_turns(conn: sa.Connection, subject_refs: Collection[str]) -> int:
    """Requests of these subjects ended (inside this transaction): releases the next one of each, if held."""
    if not subject_refs:
        return 0
    return conn.execute(_release_statement(conn.dialect.name), {"subjects": sorted(subject_refs)}).rowcount


@functools.cache
def _release_statement(dialect: str) -> sa.Update:
    """Built once: every harvest that ends a request runs it."""
    return _release_by(among_bound(dialect, requests.c.subject_ref, "subjects"))


def release_missed_turns(conn: sa.Connection) -> int:
    """Releases held tasks whose request's turn has come: only ever a race's leftovers. Reads only the
    subjects that have held tasks (``ix_tasks_held``), so it costs nothing when none are."""
    held_subjects = (sa.select(requests.c.subject_ref).distinct()
                     .where(requests.c.seq.in_(sa.select(tasks.c.request_seq).where(tasks.c.held))))
    return conn.execute(_release_by(requests.c.subject_ref.in_(held_subjects))).rowcount
