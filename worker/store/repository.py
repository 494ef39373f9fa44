"""Every write oubli makes to its store, each in one transaction with its audit event and receipt.

The store is one class in three layers: ``base`` (request locks, derived status, receipts, audit),
``claims`` (starting due tasks within every system's limit) and, here, intake, results, operator
actions and reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker import receipts, states
from worker.core.timefmt import aware
from worker.messages import Command
from worker.states import RequestStatus, SystemState
from worker.store.claims import Claims
from worker.store.records import (
    OPEN_STATUSES,
    ClaimedTask,
    Finished,
    NotFound,
    Recorded,
    StoreConflict,
    TaskUpdate,
    subject_json,
    task_state,
)
from worker.store.schema import audit_events, outbox, requests, tasks

__all__ = ["OPEN_STATUSES", "ClaimedTask", "Finished", "NotFound", "Recorded", "Store", "StoreConflict", "TaskUpdate"]


class Store(Claims):
    # --- intake ----------------------------------------------------------------------------

    def record_command(
        self, command: Command, *, subject_ref: str, digest: str, targets: Mapping[str, int], now: datetime,
        note: str | None = None, replaces: str | None = None,
    ) -> Recorded:
        """Records a new request with one pending task per target system (system -> max attempts).

        ``note`` (PII-free) is appended to the ``accepted`` audit event's detail: a replay's provenance.
        ``replaces`` names the rejected request a DLQ replay carries out under this new id: that one
        gets a ``replayed_as`` audit event, so support can follow the producer's old id to this one.
        """
        try:
            with self.engine.begin() as conn:
                # The request lock (FOR UPDATE), as every other writer of its receipts takes it: without it a
                # duplicate could render the request as it was before a concurrent transaction completed it,
                # and queue that stale receipt after the completed one.
                existing = conn.execute(
                    sa.select(requests).where(requests.c.request_id == command.request_id).with_for_update()
                ).mappings().first()
                if existing is not None:
                    if existing["body_digest"] != digest:
                        return Recorded.CONFLICT
                    self._audit(conn, command.request_id, None, now, "duplicate_received")
                    self._enqueue_receipt(conn, command.request_id, now, request=dict(existing))
                    return Recorded.DUPLICATE
                inserted = conn.execute(requests.insert().values(
                    request_id=command.request_id, kind=command.kind, status=RequestStatus.ACCEPTED,
                    subject_ref=subject_ref, body_digest=digest, subject_json=subject_json(command, subject_ref),
                    reason=command.reason, requested_by=command.requested_by, requested_at=command.requested_at,
                    due_at=command.due_at, priority=command.priority, created_at=now, updated_at=now,
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
                            detail=f"{command.kind} for {len(targets)} systems, requested by {command.requested_by}"
                            + (f"; {note}" if note else ""))
                if replaces is not None and replaces != command.request_id and conn.execute(
                        sa.select(requests.c.seq).where(requests.c.request_id == replaces)).first() is not None:
                    # Append-only, and no receipt: the old request stays rejected, as SPEC requires.
                    self._audit(conn, replaces, None, now, "replayed_as", detail=f"carried out as {command.request_id}"
                                + (f"; {note}" if note else ""))
                self._enqueue_receipt(conn, command.request_id, now)
                return Recorded.NEW
        except sa.exc.IntegrityError:
            # Another worker recorded the same request_id between our read and insert.
            return self.record_command(command, subject_ref=subject_ref, digest=digest, targets=targets, now=now,
                                       note=note, replaces=replaces)

    def record_invalid(
        self, *, request_id: str | None, code: str, message: str, raw: bytes | None, key: bytes | None,
        headers: Sequence[tuple[str, bytes]], source: str, now: datetime, note: str | None = None,
    ) -> bool:
        """DLQs a bad command; receipts a rejection only for an unknown, readable request_id.

        ``note`` (PII-free, e.g. which DLQ replay sent the command) joins the ``rejected`` audit event.

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
                                error_code=code, detail=f"{message}; {note}" if note else message)
                    self._enqueue_receipt(conn, request_id, now)
                    receipted = True
            # The sender's headers go on as received, but a key the producer could not encode (a lone
            # surrogate) is escaped: the relay must be able to publish whatever is stored here.
            dlq_headers = [*((k.encode("utf-8", "backslashreplace").decode(), v or b"") for k, v in headers),
                           ("x-oubli-error-code", code.encode()),
                           ("x-oubli-error-message", message[:1000].encode("utf-8", "backslashreplace")),
                           ("x-oubli-source", source.encode("utf-8", "backslashreplace"))]
            conn.execute(outbox.insert().values(
                topic=self.topics.dlq, key=key, value=raw, created_at=now,
                # ensure_ascii (the default) escapes NUL and every non-ASCII character: the text is ASCII.
                headers_json=json.dumps([(k, v.decode("latin-1")) for k, v in dlq_headers]),
            ))
            return receipted

    def finish(self, claimed: ClaimedTask, event: states.Event, update: TaskUpdate, now: datetime) -> Finished | None:
        """Records a connector call's result. None if the lease was lost (another worker owns it now)."""
        return self.finish_many([(claimed, event, update)], now)[0]

    def finish_many(self, results: Sequence[tuple[ClaimedTask, states.Event, TaskUpdate]],
                    now: datetime) -> list[Finished | None]:
        """Records several calls' results in one transaction, in the order of ``results``.

        Request rows are locked in request_id order, so two workers harvesting overlapping batches
        wait for each other instead of deadlocking. If the store fails, nothing is recorded and the
        caller keeps every result for its next try.
        """
        finished: list[Finished | None] = [None] * len(results)
        with self.engine.begin() as conn:
            for index in sorted(range(len(results)), key=lambda i: results[i][0].request_id):
                finished[index] = self._finish(conn, *results[index], now)
        return finished

    def _finish(self, conn: sa.Connection, claimed: ClaimedTask, event: states.Event, update: TaskUpdate,
                now: datetime) -> Finished | None:
        request = self._lock_request(conn, claimed.request_id)
        rows = self._task_rows(conn, claimed.request_id)
        row = next(r for r in rows if r["system"] == claimed.system)
        if row["version"] != claimed.version or row["lease_owner"] != self.actor:
            return None
        before = task_state(row)
        after = states.transition(before, event, now, self.policy)
        row.update(self._write_task(conn, claimed.request_id, claimed.system, row["version"], after, update))
        error_code = after.error_code if after.state in (SystemState.RETRYING, SystemState.FAILED) else None
        self._audit(conn, claimed.request_id, claimed.system, now, type(event).__name__.lower(),
                    from_state=before.state, to_state=after.state, attempt=after.attempts,
                    error_code=error_code, detail=after.error_message if error_code else after.outcome)
        changes: dict[str, Any] = {}
        if update.identifiers is not None and request["subject_json"] is not None:
            subject = json.loads(request["subject_json"])
            subject["identifiers"] = {k: list(v) for k, v in update.identifiers.items()}
            changes["subject_json"] = json.dumps(subject)
        if update.export is not None:
            changes["export_json"] = json.dumps(update.export)
        status = self._refresh_request(conn, request, now, rows=rows, changes=changes, force_receipt=True)
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
        before = task_state(row)
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
