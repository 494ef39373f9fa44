"""The store's shared internals: request locks, task rows, derived status, receipts and audit.

Locking: a write that touches a request's tasks first locks the request row (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers anyway), so a request's status is always derived from a
consistent view of its tasks and its receipts enter the outbox in the order they happened.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker import receipts, states
from worker.config import Topics
from worker.states import RequestStatus, SystemState, TaskState
from worker.store.outbox import Outbox
from worker.store.records import NotFound, StoreConflict, TaskUpdate
from worker.store.schema import audit_events, outbox, requests, tasks


class StoreBase:
    def __init__(self, engine: sa.Engine, *, topics: Topics, policy: states.RetryPolicy, actor: str) -> None:
        self.engine = engine
        self.topics = topics
        self.policy = policy
        self.actor = actor
        self.outbox = Outbox(engine, actor=actor)

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
    def _task_rows(conn: sa.Connection, request_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(sa.select(tasks).where(tasks.c.request_id == request_id).order_by(tasks.c.system))
        return [dict(r) for r in rows.mappings()]

    @staticmethod
    def _write_task(conn: sa.Connection, request_id: str, system: str, version: int, after: TaskState,
                    update: TaskUpdate) -> dict[str, Any]:
        """Writes a task's new state; returns the values written, for the caller's copy of the row."""
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
        return values

    def _refresh_request(self, conn: sa.Connection, request: Mapping[str, Any], now: datetime, *,
                         rows: list[dict[str, Any]] | None = None, changes: Mapping[str, Any] | None = None,
                         force_receipt: bool = False) -> RequestStatus:
        """Derives the request's status from its tasks; purges personal data when it turns terminal.

        ``rows`` are the request's task rows as this transaction left them, when the caller has them:
        passing them saves reading them back twice per write, which is most of a write's round trips.
        ``changes`` are other columns of the request to write in the same statement.
        """
        if rows is None:
            rows = self._task_rows(conn, request["request_id"])
        status = states.request_status((SystemState(r["state"]) for r in rows),
                                       any_attempted=any(r["attempts"] > 0 for r in rows))
        changed = status != request["status"]
        values: dict[str, Any] = {**(changes or {}), "updated_at": now, "status": status}
        if status in states.TERMINAL_STATUSES:
            # SPEC invariant 8: the orchestrator forgets too.
            values.update(completed_at=now, subject_json=None, reason=None, purged_at=now)
        conn.execute(requests.update().where(requests.c.request_id == request["request_id"]).values(**values))
        if changed:
            self._audit(conn, request["request_id"], None, now, "status_changed", from_state=request["status"],
                        to_state=status)
        if changed or force_receipt:
            self._enqueue_receipt(conn, request["request_id"], now, request={**request, **values}, rows=rows)
        return status

    def _enqueue_receipt(self, conn: sa.Connection, request_id: str, now: datetime, *,
                         request: Mapping[str, Any] | None = None, rows: list[dict[str, Any]] | None = None) -> None:
        if request is None:
            request = dict(conn.execute(sa.select(requests).where(requests.c.request_id == request_id))
                           .mappings().one())
        receipt = receipts.render(request, rows if rows is not None else self._task_rows(conn, request_id))
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
