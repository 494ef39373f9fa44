"""Read-only views of the store: the figures for ``/metrics`` and the open-request list operators work from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from worker.core.timefmt import aware
from worker.states import RequestStatus, SystemState
from worker.store.records import OPEN_STATUSES
from worker.store.schema import OPERATOR_ACTIONS, audit_events, outbox, requests, tasks

# (gauge label, at least this old, younger than this); the first takes requests without ``requested_at``.
AGE_BUCKETS = (("lt_1h", None, timedelta(hours=1)), ("lt_1d", timedelta(hours=1), timedelta(days=1)),
               ("lt_7d", timedelta(days=1), timedelta(days=7)), ("lt_30d", timedelta(days=7), timedelta(days=30)),
               ("ge_30d", timedelta(days=30), None))


def _aged(now: datetime, at_least: timedelta | None, under: timedelta | None) -> sa.ColumnElement[bool]:
    requested = requests.c.requested_at
    if at_least is None:  # a request without requested_at counts as new
        return sa.or_(requested.is_(None), requested > now - under) if under else requested.is_(None)
    older = requested <= now - at_least
    return older if under is None else sa.and_(older, requested > now - under)


def request_gauges(engine: sa.Engine, now: datetime) -> tuple[dict[str, int], int, dict[str, int]]:
    """Requests by status, overdue open requests, and open requests by age (for /metrics).

    Counted in SQL: fetching every open request to bucket it in Python cost the loop thread 0.4 s a refresh
    during a 20,000-request burst."""
    count = sa.func.count
    buckets = [count().filter(_aged(now, at_least, under)).label(name) for name, at_least, under in AGE_BUCKETS]
    with engine.connect() as conn:
        by_status = {row.status: row.n for row in conn.execute(
            sa.select(requests.c.status, count().label("n")).group_by(requests.c.status))}
        row = conn.execute(sa.select(count().filter(requests.c.due_at < now).label("overdue"), *buckets)
                           .where(requests.c.status.in_(OPEN_STATUSES))).one()
    return by_status, row.overdue, {name: row._mapping[name] for name, _, _ in AGE_BUCKETS}


def operator_actions(engine: sa.Engine) -> dict[tuple[str, ...], int]:
    """Systems confirmed and retried by hand (``oubli confirm``, ``oubli retry``), ever, by (system, action).

    Counted from the audit trail, which keeps every one for good, and not in the process that ran the command:
    that is a CLI run that exits at once, and no Prometheus ever scrapes it. ``ix_audit_events_operator`` holds
    just these rows, so the count does not read the whole trail."""
    action = audit_events.c.action
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_events.c.system, action, sa.func.count().label("n"))
                            .where(action.in_(OPERATOR_ACTIONS)).group_by(audit_events.c.system, action))
        return {(row.system or "", OPERATOR_ACTIONS[row.action]): row.n for row in rows}


def outbox_backlog(engine: sa.Engine, now: datetime) -> tuple[int, float]:
    """Records waiting to be published, and the age in seconds of the oldest (0 when none wait).

    A backlog that only grows means receipts are not reaching Kafka: the broker is unreachable, or
    no worker holds the relay lease.
    """
    with engine.connect() as conn:
        count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(outbox.c.created_at))).one()
    return count, max(0.0, (now - aware(oldest)).total_seconds()) if oldest is not None else 0.0


@dataclass(frozen=True)
class Blocker:
    """A system that has not confirmed yet, and why (error codes are PII-free by contract)."""

    system: str
    state: str
    attempts: int
    error_code: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class OpenRequest:
    request_id: str
    kind: str | None
    status: str
    subject_ref: str | None
    requested_at: datetime | None
    due_at: datetime | None
    blockers: tuple[Blocker, ...]
    # An earlier open request of the same subject: none of this one's systems starts before it ends
    # (per-subject order), which is why an erasure can sit untouched behind a stuck export.
    waits_for: str | None = None

    def overdue(self, now: datetime) -> bool:
        return self.status in OPEN_STATUSES and self.due_at is not None and self.due_at < now


def open_requests(engine: sa.Engine, now: datetime, *, statuses: Sequence[str] = (), overdue_only: bool = False,
                  system: str | None = None, subject_ref: str | None = None,
                  limit: int = 50) -> tuple[int, list[OpenRequest]]:
    """Open requests, the most urgent (earliest due) first, each with the systems holding it up.

    Returns how many match in all, and the first ``limit`` of them. This is what an operator answers
    an "overdue" or "action required" alert from, so it reads only the store, never a topic. With
    ``subject_ref`` it is one subject's requests, finished ones too, newest first: what support
    looks at when a customer asks what became of their request.
    """
    if subject_ref is not None:
        wanted = list(statuses) if statuses else [s.value for s in RequestStatus]
    else:
        wanted = [s for s in statuses if s in OPEN_STATUSES] if statuses else list(OPEN_STATUSES)
    where: list[sa.ColumnElement[bool]] = [requests.c.status.in_(wanted)]
    if subject_ref is not None:
        where.append(requests.c.subject_ref == subject_ref)
    if overdue_only:
        where.append(requests.c.due_at < now)
    if system is not None:
        where.append(sa.exists(sa.select(sa.literal(1)).select_from(tasks).where(
            tasks.c.request_id == requests.c.request_id, tasks.c.system == system,
            tasks.c.state != SystemState.CONFIRMED)))
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(requests).where(*where)).scalar_one()
        rows = conn.execute(
            sa.select(requests.c.seq, requests.c.request_id, requests.c.kind, requests.c.status, requests.c.subject_ref,
                      requests.c.requested_at, requests.c.due_at)
            .where(*where).order_by(*((requests.c.seq.desc(),) if subject_ref is not None else
                                      (requests.c.due_at.is_(None), requests.c.due_at, requests.c.seq))).limit(limit)
        ).all()
        ids = [row.request_id for row in rows]
        blockers: dict[str, list[Blocker]] = {request_id: [] for request_id in ids}
        if ids:
            for task in conn.execute(
                sa.select(tasks.c.request_id, tasks.c.system, tasks.c.state, tasks.c.attempts, tasks.c.error_code,
                          tasks.c.next_attempt_at)
                .where(tasks.c.request_id.in_(ids), tasks.c.state != SystemState.CONFIRMED)
                .order_by(tasks.c.system)
            ):
                blockers[task.request_id].append(Blocker(
                    system=task.system, state=task.state, attempts=task.attempts, error_code=task.error_code,
                    next_attempt_at=aware(task.next_attempt_at) if task.next_attempt_at else None))
        waits_for = _earlier_open(conn, [row for row in rows if row.status in OPEN_STATUSES])
    return total, [
        OpenRequest(request_id=row.request_id, kind=row.kind, status=row.status, subject_ref=row.subject_ref,
                    requested_at=aware(row.requested_at) if row.requested_at else None,
                    due_at=aware(row.due_at) if row.due_at else None, blockers=tuple(blockers[row.request_id]),
                    waits_for=waits_for.get(row.request_id))
        for row in rows
    ]


def _earlier_open(conn: sa.Connection, rows: Sequence[Any]) -> dict[str, str]:
    """request_id -> the oldest open request of the same subject recorded before it, where there is one."""
    refs = {row.subject_ref for row in rows if row.subject_ref}
    if not refs:
        return {}
    queue: dict[str, list[tuple[int, str]]] = {}
    for other in conn.execute(sa.select(requests.c.seq, requests.c.request_id, requests.c.subject_ref)
                              .where(requests.c.subject_ref.in_(refs), requests.c.status.in_(OPEN_STATUSES))
                              .order_by(requests.c.seq)):
        queue.setdefault(other.subject_ref, []).append((other.seq, other.request_id))
    found = {}
    for row in rows:
        head = queue.get(row.subject_ref or "", [])
        if head and head[0][0] < row.seq:
            found[row.request_id] = head[0][1]
    return found
