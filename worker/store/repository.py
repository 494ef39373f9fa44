"""Every write oubli makes to its store, each in one transaction with its audit event and receipt.

Locking: a write that touches a request's tasks first locks the request row (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers anyway), so a request's status is always derived from a
consistent view of its tasks and its receipts enter the outbox in the order they happened.
Task claims use a version compare-and-set, so two workers can never both run one task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from connectors.base import Subject
from worker import receipts, states
from worker.config import Topics
from worker.messages import Command
from worker.states import RequestStatus, SystemState, TaskState
from worker.store.outbox import Outbox
from worker.store.schema import audit_events, outbox, requests, tasks
from worker.timefmt import aware

OPEN_STATUSES = [s.value for s in RequestStatus if s not in states.TERMINAL_STATUSES]


class Recorded(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class ClaimedTask:
    request_id: str
    system: str
    kind: str
    subject: Subject
    polling: bool
    vendor_ref: str | None
    attempt: int
    version: int


@dataclass(frozen=True)
class TaskUpdate:
    """What a connector result adds to the state machine's view of a task."""

    retained: Sequence[Mapping[str, str]] = ()
    expected_by: datetime | None = None
    detail: str | None = None
    records: int | None = None
    confirmed_by: str | None = None
    export: Mapping[str, Any] | None = None
    identifiers: Mapping[str, Sequence[str]] | None = None


@dataclass(frozen=True)
class Finished:
    """What recording a result did to its request; ``closed`` when it made the request terminal."""

    status: RequestStatus
    closed: bool
    kind: str
    requested_at: datetime | None


class NotFound(LookupError):
    pass


class StoreConflict(RuntimeError):
    """An operator action that the request's current state does not allow."""


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _task_state(row: Mapping[str, Any]) -> TaskState:
    return TaskState(
        state=SystemState(row["state"]), attempts=row["attempts"], max_attempts=row["max_attempts"],
        next_attempt_at=aware(row["next_attempt_at"]) if row["next_attempt_at"] else None,
        outcome=row["outcome"], vendor_ref=row["vendor_ref"], error_code=row["error_code"],
        error_message=row["error_message"],
        confirmed_at=aware(row["confirmed_at"]) if row["confirmed_at"] else None,
    )


def _subject_json(command: Command, subject_ref: str) -> str:
    return json.dumps({
        "customer_id": command.customer_id, "emails": list(command.emails), "phones": list(command.phones),
        "identifiers": {k: list(v) for k, v in command.identifiers.items()}, "subject_ref": subject_ref,
    })


def _subject(request_id: str, subject_json: str) -> Subject:
    data = json.loads(subject_json)
    return Subject(
        request_id=request_id, subject_ref=data["subject_ref"], customer_id=data["customer_id"],
        emails=tuple(data["emails"]), phones=tuple(data["phones"]),
        identifiers={k: tuple(v) for k, v in data["identifiers"].items()},
    )


class Store:
    def __init__(self, engine: sa.Engine, *, topics: Topics, policy: states.RetryPolicy, actor: str) -> None:
        self.engine = engine
        self.topics = topics
        self.policy = policy
        self.actor = actor
        self.outbox = Outbox(engine, actor=actor)

    # --- intake ----------------------------------------------------------------------------

    def record_command(
        self, command: Command, *, subject_ref: str, digest: str, targets: Mapping[str, int], now: datetime,
    ) -> Recorded:
        """Records a new request with one pending task per target system (system -> max attempts)."""
        try:
            with self.engine.begin() as conn:
                existing = conn.execute(
                    sa.select(requests.c.body_digest).where(requests.c.request_id == command.request_id)
                ).first()
                if existing is not None:
                    if existing.body_digest != digest:
                        return Recorded.CONFLICT
                    self._audit(conn, command.request_id, None, now, "duplicate_received")
                    self._enqueue_receipt(conn, command.request_id, now)
                    return Recorded.DUPLICATE
                inserted = conn.execute(requests.insert().values(
                    request_id=command.request_id, kind=command.kind, status=RequestStatus.ACCEPTED,
                    subject_ref=subject_ref, body_digest=digest, subject_json=_subject_json(command, subject_ref),
                    reason=command.reason, requested_by=command.requested_by, requested_at=command.requested_at,
                    due_at=command.due_at, created_at=now, updated_at=now,
                )).inserted_primary_key
                assert inserted is not None
                seq = inserted[0]
                conn.execute(tasks.insert(), [
                    {"request_id": command.request_id, "system": system, "request_seq": seq,
                     "state": SystemState.PENDING, "attempts": 0, "max_attempts": max_attempts,
                     "next_attempt_at": now, "records": 0, "version": 0}
                    for system, max_attempts in targets.items()
                ])
                self._audit(conn, command.request_id, None, now, "accepted", to_state=RequestStatus.ACCEPTED,
                            detail=f"{command.kind} for {len(targets)} systems, requested by {command.requested_by}")
                self._enqueue_receipt(conn, command.request_id, now)
                return Recorded.NEW
        except sa.exc.IntegrityError:
            # Another worker recorded the same request_id between our read and insert.
            return self.record_command(command, subject_ref=subject_ref, digest=digest, targets=targets, now=now)

    def record_invalid(
        self, *, request_id: str | None, code: str, message: str, raw: bytes | None, key: bytes | None,
        headers: Sequence[tuple[str, bytes]], source: str, now: datetime,
    ) -> bool:
        """DLQs a bad command; receipts a rejection only for an unknown, readable request_id.

        Returns whether a ``rejected`` receipt was written. A known request is never touched: the
        receipts topic is compacted, so a stray record would overwrite its real state.
        """
        with self.engine.begin() as conn:
            receipted = False
            if request_id is not None:
                known = conn.execute(
                    sa.select(requests.c.seq).where(requests.c.request_id == request_id)
                ).first()
                if known is None:
                    conn.execute(requests.insert().values(
                        request_id=request_id, status=RequestStatus.REJECTED, created_at=now, updated_at=now,
                        completed_at=now, error_code=code, error_message=message[:1000],
                    ))
                    self._audit(conn, request_id, None, now, "rejected", to_state=RequestStatus.REJECTED,
                                error_code=code, detail=message)
                    self._enqueue_receipt(conn, request_id, now)
                    receipted = True
            dlq_headers = [*headers, ("x-oubli-error-code", code.encode()),
                           ("x-oubli-error-message", message.encode()), ("x-oubli-source", source.encode())]
            conn.execute(outbox.insert().values(
                topic=self.topics.dlq, key=key, value=raw, created_at=now,
                headers_json=json.dumps([(k, v.decode("latin-1")) for k, v in dlq_headers]),
            ))
            return receipted

    # --- execution -------------------------------------------------------------------------

    def claim_due(self, *, now: datetime, lease_until: datetime, limits: Mapping[str, int],
                  room: int) -> list[ClaimedTask]:
        """Claims up to ``room`` due tasks, oldest due first, keeping each system's running tasks,
        across every worker, within ``limits[system]``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tasks.c.system, sa.func.count().label("n"))
                                .where(*self._live_running(now)).group_by(tasks.c.system))
            running = {row.system: row.n for row in rows}
        wanted = {s: min(room, limit - running.get(s, 0)) for s, limit in limits.items()}
        wanted = {s: n for s, n in wanted.items() if n > 0}
        if not wanted or room <= 0:
            return []
        earlier_open = sa.select(sa.literal(1)).select_from(requests.alias("earlier")).where(
            sa.literal_column("earlier.subject_ref") == requests.c.subject_ref,
            sa.literal_column("earlier.seq") < requests.c.seq,
            sa.literal_column("earlier.status").in_(OPEN_STATUSES),
        )
        sibling = tasks.alias("sibling")
        unconfirmed_sibling = sa.select(sa.literal(1)).select_from(sibling).where(
            sibling.c.request_id == tasks.c.request_id, sibling.c.system != receipts.PACKAGE_TASK,
            sibling.c.state != SystemState.CONFIRMED,
        )
        unresolved_identity = sa.select(sa.literal(1)).select_from(sibling).where(
            sibling.c.request_id == tasks.c.request_id, sibling.c.system == receipts.IDENTITY_TASK,
            sibling.c.state != SystemState.CONFIRMED,
        )
        due = sa.or_(
            sa.and_(tasks.c.state.in_([s.value for s in states.CLAIMABLE]), tasks.c.next_attempt_at <= now),
            sa.and_(tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at < now),
        )
        query = (
            sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version)
            .join(requests, requests.c.request_id == tasks.c.request_id)
            .where(due, tasks.c.system.in_(list(wanted)), ~sa.exists(earlier_open),
                   sa.or_(tasks.c.system != receipts.PACKAGE_TASK, ~sa.exists(unconfirmed_sibling)),
                   sa.or_(tasks.c.system == receipts.IDENTITY_TASK, ~sa.exists(unresolved_identity)))
            .order_by(tasks.c.next_attempt_at, tasks.c.request_seq)
            .limit(sum(wanted.values()) * 4)
        )
        with self.engine.connect() as conn:
            candidates = conn.execute(query).all()
        claimed: list[ClaimedTask] = []
        for row in candidates:
            if wanted.get(row.system, 0) <= 0 or len(claimed) >= room:
                continue
            task = self._claim(row.request_id, row.system, row.version, now, lease_until, limits[row.system])
            if task is not None:
                claimed.append(task)
                wanted[row.system] -= 1
        return claimed

    @staticmethod
    def _live_running(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
        return (tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at >= now)

    def _claim(self, request_id: str, system: str, version: int, now: datetime,
               lease_until: datetime, limit: int) -> ClaimedTask | None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Claims of one system queue up across workers, so the count below is exact.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(f"claim:{system}")})
                busy = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                    *self._live_running(now), tasks.c.system == system)).scalar_one()
                if busy >= limit:
                    return None
            request = self._lock_request(conn, request_id)
            row = self._task_row(conn, request_id, system)
            if row["version"] != version or request["subject_json"] is None:
                return None
            before = _task_state(row)
            current = before
            if current.state is SystemState.RUNNING:  # its worker died mid-call
                current = states.transition(current, states.LeaseExpired(), now, self.policy)
                self._audit(conn, request_id, system, now, "lease_expired", from_state=before.state,
                            to_state=current.state, attempt=current.attempts, error_code="lease_expired")
            after = states.transition(current, states.Claim(), now, self.policy)
            updated = conn.execute(
                tasks.update().where(tasks.c.request_id == request_id, tasks.c.system == system,
                                     tasks.c.version == version)
                .values(state=after.state, attempts=after.attempts, next_attempt_at=None,
                        lease_owner=self.actor, lease_expires_at=lease_until, version=version + 1)
            ).rowcount
            if updated != 1:
                return None
            self._audit(conn, request_id, system, now, "claimed", from_state=current.state, to_state=after.state,
                        attempt=after.attempts)
            self._refresh_request(conn, request, now)
            return ClaimedTask(
                request_id=request_id, system=system, kind=request["kind"],
                subject=_subject(request_id, request["subject_json"]),
                polling=current.state is SystemState.WAITING_VENDOR, vendor_ref=row["vendor_ref"],
                attempt=after.attempts, version=version + 1,
            )

    def renew_leases(self, claimed: Iterable[ClaimedTask], lease_until: datetime) -> None:
        with self.engine.begin() as conn:
            for task in claimed:
                conn.execute(tasks.update().where(
                    tasks.c.request_id == task.request_id, tasks.c.system == task.system,
                    tasks.c.version == task.version, tasks.c.lease_owner == self.actor,
                ).values(lease_expires_at=lease_until))

    def finish(self, claimed: ClaimedTask, event: states.Event, update: TaskUpdate, now: datetime) -> Finished | None:
        """Records a connector call's result. None if the lease was lost (another worker owns it now)."""
        with self.engine.begin() as conn:
            request = self._lock_request(conn, claimed.request_id)
            row = self._task_row(conn, claimed.request_id, claimed.system)
            if row["version"] != claimed.version or row["lease_owner"] != self.actor:
                return None
            before = _task_state(row)
            after = states.transition(before, event, now, self.policy)
            self._write_task(conn, claimed.request_id, claimed.system, row["version"], after, update)
            error_code = after.error_code if after.state in (SystemState.RETRYING, SystemState.FAILED) else None
            self._audit(conn, claimed.request_id, claimed.system, now, type(event).__name__.lower(),
                        from_state=before.state, to_state=after.state, attempt=after.attempts,
                        error_code=error_code, detail=after.error_message if error_code else after.outcome)
            if update.identifiers is not None and request["subject_json"] is not None:
                subject = json.loads(request["subject_json"])
                subject["identifiers"] = {k: list(v) for k, v in update.identifiers.items()}
                conn.execute(requests.update().where(requests.c.request_id == claimed.request_id)
                             .values(subject_json=json.dumps(subject)))
            if update.export is not None:
                conn.execute(requests.update().where(requests.c.request_id == claimed.request_id)
                             .values(export_json=json.dumps(update.export)))
            status = self._refresh_request(conn, request, now, force_receipt=True)
            return Finished(status, status != request["status"] and status in states.TERMINAL_STATUSES,
                            request["kind"], aware(request["requested_at"]) if request["requested_at"] else None)

    # --- operators -------------------------------------------------------------------------

    def operator_retry(self, request_id: str, system: str | None, *, actor: str, now: datetime) -> list[str]:
        with self.engine.begin() as conn:
            request = self._open_request(conn, request_id)
            rows = self._task_rows(conn, request_id)
            chosen = [r for r in rows if (system is None and r["state"] == SystemState.FAILED) or r["system"] == system]
            if system is not None and not chosen:
                raise NotFound(f"request {request_id} has no system {system}")
            for row in chosen:
                self._operate(conn, row, states.OperatorRetry(), actor, now, TaskUpdate())
            self._refresh_request(conn, request, now, force_receipt=True)
            return [r["system"] for r in chosen]

    def operator_confirm(self, request_id: str, system: str, *, actor: str, note: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            request = self._open_request(conn, request_id)
            rows = [r for r in self._task_rows(conn, request_id) if r["system"] == system]
            if not rows:
                raise NotFound(f"request {request_id} has no system {system}")
            self._operate(conn, rows[0], states.OperatorConfirm(), actor, now, TaskUpdate(confirmed_by=actor),
                          note=note)
            self._refresh_request(conn, request, now, force_receipt=True)

    def _operate(self, conn: sa.Connection, row: Mapping[str, Any], event: states.Event, actor: str,
                 now: datetime, update: TaskUpdate, note: str | None = None) -> None:
        before = _task_state(row)
        try:
            after = states.transition(before, event, now, self.policy)
        except states.IllegalTransition as exc:
            raise StoreConflict(f"system {row['system']} is {before.state}: {exc}") from None
        self._write_task(conn, row["request_id"], row["system"], row["version"], after, update)
        self._audit(conn, row["request_id"], row["system"], now, type(event).__name__.lower(), actor=actor,
                    from_state=before.state, to_state=after.state, attempt=after.attempts, detail=note)

    # --- reads -----------------------------------------------------------------------------

    def get(self, request_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        with self.engine.connect() as conn:
            request = conn.execute(sa.select(requests).where(requests.c.request_id == request_id)).mappings().first()
            if request is None:
                raise NotFound(f"no request {request_id}")
            events = conn.execute(sa.select(audit_events).where(audit_events.c.request_id == request_id)
                                  .order_by(audit_events.c.id)).mappings().all()
            return dict(request), self._task_rows(conn, request_id), [dict(e) for e in events]

    def receipt(self, request_id: str) -> dict[str, Any]:
        request, task_rows, _ = self.get(request_id)
        return receipts.render(request, task_rows)

    # --- internals -------------------------------------------------------------------------

    def _lock_request(self, conn: sa.Connection, request_id: str) -> dict[str, Any]:
        row = conn.execute(
            sa.select(requests).where(requests.c.request_id == request_id).with_for_update()
        ).mappings().first()
        if row is None:
            raise NotFound(f"no request {request_id}")
        return dict(row)

    def _open_request(self, conn: sa.Connection, request_id: str) -> dict[str, Any]:
        request = self._lock_request(conn, request_id)
        if RequestStatus(request["status"]) in states.TERMINAL_STATUSES:
            raise StoreConflict(f"request {request_id} is {request['status']}; a terminal request cannot change")
        return request

    @staticmethod
    def _task_row(conn: sa.Connection, request_id: str, system: str) -> dict[str, Any]:
        row = conn.execute(sa.select(tasks).where(tasks.c.request_id == request_id, tasks.c.system == system)
                           ).mappings().one()
        return dict(row)

    @staticmethod
    def _task_rows(conn: sa.Connection, request_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(sa.select(tasks).where(tasks.c.request_id == request_id).order_by(tasks.c.system))
        return [dict(r) for r in rows.mappings()]

    @staticmethod
    def _write_task(conn: sa.Connection, request_id: str, system: str, version: int, after: TaskState,
                    update: TaskUpdate) -> None:
        values: dict[str, Any] = {
            k: v for k, v in dataclasses.asdict(after).items() if k != "max_attempts"
        }
        values.update(lease_owner=None, lease_expires_at=None, version=version + 1)
        if update.retained:
            values["retained_json"] = json.dumps(list(update.retained))
        for name in ("expected_by", "detail", "records", "confirmed_by"):
            if getattr(update, name) is not None:
                values[name] = getattr(update, name)
        conn.execute(tasks.update().where(tasks.c.request_id == request_id, tasks.c.system == system)
                     .values(**values))

    def _refresh_request(self, conn: sa.Connection, request: Mapping[str, Any], now: datetime, *,
                         force_receipt: bool = False) -> RequestStatus:
        """Derives the request's status from its tasks; purges personal data when it turns terminal."""
        rows = self._task_rows(conn, request["request_id"])
        status = states.request_status((SystemState(r["state"]) for r in rows),
                                       any_attempted=any(r["attempts"] > 0 for r in rows))
        changed = status != request["status"]
        values: dict[str, Any] = {"updated_at": now, "status": status}
        if status in states.TERMINAL_STATUSES:
            # SPEC invariant 8: the orchestrator forgets too.
            values.update(completed_at=now, subject_json=None, reason=None, purged_at=now)
        conn.execute(requests.update().where(requests.c.request_id == request["request_id"]).values(**values))
        if changed:
            self._audit(conn, request["request_id"], None, now, "status_changed", from_state=request["status"],
                        to_state=status)
        if changed or force_receipt:
            self._enqueue_receipt(conn, request["request_id"], now)
        return status

    def _enqueue_receipt(self, conn: sa.Connection, request_id: str, now: datetime) -> None:
        request = dict(conn.execute(sa.select(requests).where(requests.c.request_id == request_id)).mappings().one())
        receipt = receipts.render(request, self._task_rows(conn, request_id))
        conn.execute(outbox.insert().values(
            topic=self.topics.receipts, key=request_id.encode(), value=receipts.encode(receipt), created_at=now,
            headers_json=json.dumps([("x-oubli-status", receipt["status"])]),
        ))

    def _audit(self, conn: sa.Connection, request_id: str, system: str | None, now: datetime, action: str, *,
               actor: str | None = None, from_state: str | None = None, to_state: str | None = None,
               attempt: int | None = None, error_code: str | None = None, detail: str | None = None) -> None:
        conn.execute(audit_events.insert().values(
            request_id=request_id, system=system, at=now, actor=actor or self.actor, action=action,
            from_state=from_state, to_state=to_state, attempt=attempt, error_code=error_code,
            detail=detail[:1000] if detail else None,
        ))
