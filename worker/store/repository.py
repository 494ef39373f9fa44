"""Every write oubli makes to its store, each in one transaction with its audit event and receipt.

The store is one class in three layers: ``base`` (request locks, derived status, receipts, audit),
``claims`` (starting due tasks within every system's limit), ``restage`` and ``unconfigured`` (two
rare sweeps) and, here, intake, results, operator actions and reads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker import receipts, states
from worker.core.timefmt import aware, iso
from worker.deadletter.topic import ERROR_CODE, ERROR_MESSAGE, REFERENCE, SOURCE, reference
from worker.messages import Command
from worker.states import RequestStatus, SystemState
from worker.store import order, turns
from worker.store.base import dicts, task_values
from worker.store.claims import Claims
from worker.store.records import (
    OPEN_STATUSES,
    ClaimedTask,
    Finished,
    NewCommand,
    NotFound,
    Recorded,
    StoreConflict,
    TaskUpdate,
    subject_json,
    task_state,
)
from worker.store.restage import Restage
from worker.store.schema import audit_events, dead_letters, outbox, requests, tasks
from worker.store.sets import among, among_bound
from worker.store.unconfigured import Unconfigured

_DLQ_OWN_HEADERS = frozenset({ERROR_CODE, ERROR_MESSAGE, SOURCE, REFERENCE})
# A dead letter whose value is larger than this is stored as a reference (its size and sha256), as the relay
# would replace it once the broker refused it (``worker.refusals``): under the broker's default message.max.bytes
# (1 MiB), far above any command (64 KiB). A record that inflated to 90 MB otherwise went into the store whole, was
# read back by the relay and handed to the producer: five to six times its size in the worker's memory.
DLQ_INLINE_MAX_BYTES = 1_000_000
# How long a dead letter's fingerprint is kept (``dead_letters``): a redelivery comes within seconds of the record
# (the offset commit it missed), or after a consumer group is reset by hand, which may well mean to do it again.
DEAD_LETTER_MEMORY = timedelta(days=7)

log = structlog.get_logger("oubli.store")

# The columns a result may change, written in bulk (``StoreBase._update_many``).
FINISH_COLUMNS = ("state", "attempts", "next_attempt_at", "outcome", "vendor_ref", "error_code", "error_message",
                  "confirmed_at", "waiting_since", "lease_losses", "lease_owner", "lease_expires_at", "version",
                  "retained_json", "expected_by", "detail", "records", "confirmed_by")
# What a receipt reads that intake leaves empty: a new request renders without reading itself back.
_RECEIPT_BLANKS = {"completed_at": None, "export_json": None, "error_code": None, "error_message": None}
_TASK_BLANKS = {"outcome": None, "vendor_ref": None, "expected_by": None, "detail": None, "retained_json": None,
                "error_code": None, "error_message": None, "confirmed_at": None, "confirmed_by": None,
                "lease_owner": None, "lease_expires_at": None, "lease_losses": 0, "waiting_since": None}
REQUEST_COLUMNS = ("status", "updated_at", "completed_at", "subject_json", "reason", "purged_at", "export_json")

__all__ = ["OPEN_STATUSES", "ClaimedTask", "Finished", "NewCommand", "NotFound", "Recorded", "Store", "StoreConflict",
           "TaskUpdate"]


class Store(Claims, Restage, Unconfigured):
    # --- intake ----------------------------------------------------------------------------

    def record_command(
        self, command: Command, *, subject_ref: str, digest: str, targets: Mapping[str, int], now: datetime,
        note: str | None = None, replaces: str | None = None,
        earlier_digests: Callable[[], Collection[str]] = tuple,
    ) -> Recorded:
        """Records a new request with one pending task per target system (system -> max attempts).

        ``digest`` is stored; a request already recorded under it or one of ``earlier_digests()`` (the same
        command's digests as earlier versions stored them, ``messages.earlier_digests``) is a duplicate, else a
        conflict.

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
                    if existing["body_digest"] != digest and existing["body_digest"] not in earlier_digests():
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
                item = NewCommand(command=command, subject_ref=subject_ref, digest=digest, targets=targets)
                conn.execute(tasks.insert(), self._new_task_rows(item, seq, now, held=False))
                self._audit(conn, command.request_id, None, now, "accepted", to_state=RequestStatus.ACCEPTED,
                            detail=f"{command.kind} for {len(targets)} systems, requested by {command.requested_by}"
                            + (f"; {note}" if note else ""))
                if replaces is not None and replaces != command.request_id and conn.execute(
                        sa.select(requests.c.seq).where(requests.c.request_id == replaces)).first() is not None:
                    # Append-only, and no receipt: the old request stays rejected (a terminal status never changes).
                    self._audit(conn, replaces, None, now, "replayed_as", detail=f"carried out as {command.request_id}"
                                + (f"; {note}" if note else ""))
                self._enqueue_receipt(conn, command.request_id, now)
                return Recorded.NEW
        except sa.exc.IntegrityError:
            # Another worker recorded the same request_id between our read and insert.
            return self.record_command(command, subject_ref=subject_ref, digest=digest, targets=targets, now=now,
                                       note=note, replaces=replaces, earlier_digests=earlier_digests)

    def record_commands(self, items: Sequence[NewCommand], now: datetime) -> list[Recorded]:
        """Records a batch of commands in one transaction of a few statements, in order; each as
        ``record_command`` would (new, duplicate or conflicting). Request ids must be distinct.

        Any store error aborts the whole batch (nothing is recorded): the caller then records the
        commands one at a time, so that one bad record ends in the DLQ alone.
        """
        if not items:
            return []
        ids = [item.command.request_id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch names a request_id twice")
        with self.engine.begin() as conn:
            # The request lock (FOR UPDATE) on the ones that exist, as every writer of receipts takes it.
            existing = {r["request_id"]: r for r in dicts(conn.execute(
                _locked_requests_statement(conn.dialect.name), {"ids": sorted(ids)}))}
            results: list[Recorded] = []
            fresh: list[NewCommand] = []
            repeated: list[str] = []
            for item in items:
                known = existing.get(item.command.request_id)
                if known is None:
                    fresh.append(item)
                    results.append(Recorded.NEW)
                elif known["body_digest"] != item.digest and known["body_digest"] not in item.earlier_digests():
                    results.append(Recorded.CONFLICT)
                else:
                    repeated.append(item.command.request_id)
                    results.append(Recorded.DUPLICATE)
            audits: list[dict[str, Any]] = []
            outbox_rows: list[dict[str, Any]] = []
            if repeated:
                rows_of: dict[str, list[dict[str, Any]]] = {}
                repeated_tasks = sa.select(tasks).where(among(conn, tasks.c.request_id, repeated))
                for row in dicts(conn.execute(repeated_tasks)):
                    rows_of.setdefault(row["request_id"], []).append(row)
                for request_id in repeated:
                    audits.append(self._audit_row(request_id, None, now, "duplicate_received"))
                    outbox_rows.append(self._receipt_row(existing[request_id], rows_of.get(request_id, []), now))
            if fresh:
                request_rows = [self._request_row(item, now) for item in fresh]
                held = turns.held_at_intake(conn, [item.subject_ref for item in fresh])
                # Sequence numbers in batch order: they order a subject's requests.
                inserted = self._insert_many(conn, requests, request_rows, returning=("request_id", "seq"))
                seqs: dict[str, int] = {row.request_id: row.seq for row in inserted}
                task_rows: list[dict[str, Any]] = []
                for item, request_row, waits in zip(fresh, request_rows, held, strict=True):
                    rows = self._new_task_rows(item, seqs[item.command.request_id], now, held=waits)
                    task_rows += rows
                    audits.append(self._accepted_audit(item, now))
                    outbox_rows.append(self._receipt_row({**_RECEIPT_BLANKS, **request_row}, rows, now))
                self._insert_many(conn, tasks, task_rows)
                for item in fresh:
                    replaced = item.replaces
                    if replaced is not None and replaced != item.command.request_id and conn.execute(
                            sa.select(requests.c.seq).where(requests.c.request_id == replaced)).first() is not None:
                        audits.append(self._replayed_audit(item, now))
            self._insert_many(conn, audit_events, audits)
            self._insert_many(conn, outbox, outbox_rows)
            return results

    @staticmethod
    def _request_row(item: NewCommand, now: datetime) -> dict[str, Any]:
        command = item.command
        return {"request_id": command.request_id, "kind": command.kind, "status": RequestStatus.ACCEPTED.value,
                "subject_ref": item.subject_ref, "body_digest": item.digest,
                "subject_json": subject_json(command, item.subject_ref), "reason": command.reason,
                "requested_by": command.requested_by, "requested_at": command.requested_at,
                "due_at": command.due_at, "priority": command.priority, "created_at": now, "updated_at": now}

    @staticmethod
    def _new_task_rows(item: NewCommand, seq: int, now: datetime, *, held: bool) -> list[dict[str, Any]]:
        # The request's priority and deadline go with each task: claims walk ix_tasks_claim in that order.
        blocked = order.at_intake(item.targets)
        return [{**_TASK_BLANKS, "request_id": item.command.request_id, "system": system, "request_seq": seq,
                 "state": SystemState.PENDING.value, "attempts": 0, "max_attempts": max_attempts,
                 "next_attempt_at": now, "records": 0, "version": 0,
                 "background": item.command.priority == "background", "due_at": item.command.due_at,
                 "held": held, "blocked": system in blocked}
                for system, max_attempts in sorted(item.targets.items())]

    def _accepted_audit(self, item: NewCommand, now: datetime) -> dict[str, Any]:
        command = item.command
        return self._audit_row(command.request_id, None, now, "accepted", to_state=RequestStatus.ACCEPTED,
                               detail=f"{command.kind} for {len(item.targets)} systems, requested by "
                               f"{command.requested_by}" + (f"; {item.note}" if item.note else ""))

    def _replayed_audit(self, item: NewCommand, now: datetime) -> dict[str, Any]:
        # Append-only, and no receipt: the old request stays rejected (a terminal status never changes).
        assert item.replaces is not None
        return self._audit_row(item.replaces, None, now, "replayed_as",
                               detail=f"carried out as {item.command.request_id}"
                               + (f"; {item.note}" if item.note else ""))

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
            if not self._first_dead_letter(conn, source=source, key=key, raw=raw, now=now):
                log.info("dead_letter_redelivered", code=code, source=source)
                return False  # the same record, redelivered: its DLQ row (and any receipt) was written then
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
            # surrogate) is escaped: the relay must be able to publish whatever is stored here. Headers named
            # like the DLQ's own, in any case, are the DLQ's alone: a forged error code would mislead `oubli dlq`, and
            # a forged reference would let the relay drop the record the broker refuses instead of standing in.
            sent = ((k.encode("utf-8", "backslashreplace").decode(), v or b"") for k, v in headers)
            own = [(ERROR_CODE, code.encode()), (ERROR_MESSAGE, message[:1000].encode("utf-8", "backslashreplace")),
                   (SOURCE, source.encode("utf-8", "backslashreplace"))]
            dlq_headers = [*((k, v) for k, v in sent if k.lower() not in _DLQ_OWN_HEADERS), *own]
            # The whole record counts, not the value alone: a compressed record of a few KiB can carry 100 MB of
            # headers, which kept inline (JSON-escaped, up to six times that) took the worker's memory at
            # intake, and again at every restart, since the record is consumed again.
            size = len(raw or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in dlq_headers)
            if size > DLQ_INLINE_MAX_BYTES:
                key, raw, dlq_headers = None, *_reference(raw or b"", key, dlq_headers, own)
            conn.execute(outbox.insert().values(
                topic=self.topics.dlq, key=key, value=raw, created_at=now,
                # ensure_ascii (the default) escapes NUL and every non-ASCII character: the text is ASCII.
                headers_json=json.dumps([(k, v.decode("latin-1")) for k, v in dlq_headers]),
            ))
            return receipted

    @staticmethod
    def _first_dead_letter(conn: sa.Connection, *, source: str, key: bytes | None, raw: bytes | None,
                           now: datetime) -> bool:
        """Notes the record as dead-lettered; False if it already was (a redelivery after a crash)."""
        digest = hashlib.sha256()
        for part in (source.encode("utf-8", "backslashreplace"), key, raw):
            digest.update(b"-" if part is None else len(part).to_bytes(8, "big") + part)
        values = {"fingerprint": digest.hexdigest(), "created_at": now}
        # ON CONFLICT: two workers may meet the same record around a rebalance; the loser writes nothing.
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        noted = conn.execute(insert(dead_letters).values(values).on_conflict_do_nothing()
                             .returning(dead_letters.c.fingerprint)).first() is not None
        if noted:
            conn.execute(dead_letters.delete().where(dead_letters.c.created_at < now - DEAD_LETTER_MEMORY))
        return noted

    def finish(self, claimed: ClaimedTask, event: states.Event, update: TaskUpdate, now: datetime) -> Finished | None:
        """Records a connector call's result. None if the lease was lost (another worker owns it now)."""
        return self.finish_many([(claimed, event, update)], now)[0]

    def finish_many(self, results: Sequence[tuple[ClaimedTask, states.Event, TaskUpdate]],
                    now: datetime) -> list[Finished | None]:
        """Records several calls' results in one transaction of a few statements, whatever their number.

        Request rows are locked in request_id order, so two workers harvesting overlapping batches
        wait for each other instead of deadlocking. Each task's transition comes from the state machine,
        in the order of ``results``; the tasks, their audit events, the requests' derived statuses and
        one receipt per request (its state after the whole batch: intermediate receipts are coalesced)
        are then written in bulk. If the store fails, nothing is recorded and the caller keeps every
        result for its next try.
        """
        if not results:
            return []
        with self.engine.begin() as conn:
            return self._finish_batch(conn, results, now)

    def _finish(self, conn: sa.Connection, claimed: ClaimedTask, event: states.Event, update: TaskUpdate,
                now: datetime) -> Finished | None:
        """One result, inside the caller's transaction."""
        return self._finish_batch(conn, [(claimed, event, update)], now)[0]

    def _finish_batch(self, conn: sa.Connection, results: Sequence[tuple[ClaimedTask, states.Event, TaskUpdate]],
                      now: datetime) -> list[Finished | None]:
        finished: list[Finished | None] = [None] * len(results)
        ids = sorted({claimed.request_id for claimed, _, _ in results})
        dialect = conn.dialect.name
        locked = dicts(conn.execute(_locked_requests_statement(dialect), {"ids": ids}))
        originals = {r["request_id"]: r for r in locked}
        rows_of = self._task_rows_of(conn, ids)
        row_of = {(task_row["request_id"], task_row["system"]): task_row
                  for rows in rows_of.values() for task_row in rows}
        changes: dict[str, dict[str, Any]] = {}
        written: dict[tuple[str, str], dict[str, Any]] = {}
        audits: list[dict[str, Any]] = []
        last_of: dict[str, int] = {}
        for index, (claimed, event, update) in enumerate(results):
            request = originals.get(claimed.request_id)
            row = row_of.get((claimed.request_id, claimed.system))
            if request is None or row is None or row["version"] != claimed.version \
                    or row["lease_owner"] != self.actor:
                continue  # the lease was lost: another worker owns the task now
            before = task_state(row)
            event, note = states.settle_erasure_outcome(request["kind"], before, event)
            if note is not None:
                update = dataclasses.replace(update, detail=f"{update.detail}; {note}"[:500] if update.detail else note)
            after = states.transition(before, event, now, self.policy)
            version = row["version"]
            row.update(task_values(version, after, update))
            written[(claimed.request_id, claimed.system)] = {**row, "_version": version}
            error_code = after.error_code if after.state in (SystemState.RETRYING, SystemState.FAILED) else None
            for system, counts in sorted((update.verified or {}).items()):
                audits.append(self._audit_row(claimed.request_id, system, now, "verified", detail=counts))
            audits.append(self._audit_row(claimed.request_id, claimed.system, now, type(event).__name__.lower(),
                                          from_state=before.state, to_state=after.state, attempt=after.attempts,
                                          error_code=error_code,
                                          detail=after.error_message if error_code
                                          else f"{after.outcome}: {note}" if note else after.outcome))
            change = changes.setdefault(claimed.request_id, {})
            subject = change.get("subject_json", request["subject_json"])
            if update.identifiers is not None and subject is not None:
                document = json.loads(subject)
                document["identifiers"] = {k: list(v) for k, v in update.identifiers.items()}
                change["subject_json"] = json.dumps(document)
            if update.export is not None:
                change["export_json"] = json.dumps(update.export)
            last_of[claimed.request_id] = index
        updated: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        status_of: dict[str, RequestStatus] = {}
        for request_id in sorted(changes):
            request, rows = originals[request_id], rows_of[request_id]
            status = states.request_status((SystemState(r["state"]) for r in rows),
                                           any_attempted=any(r["attempts"] > 0 for r in rows))
            values = {**request, **changes[request_id], "updated_at": now, "status": status}
            if status in states.TERMINAL_STATUSES:
                # The orchestrator forgets too: personal data goes with the terminal state.
                values.update(completed_at=now, subject_json=None, reason=None, purged_at=now)
            if status != request["status"]:
                audits.append(self._audit_row(request_id, None, now, "status_changed",
                                              from_state=request["status"], to_state=status))
            updated.append(values)
            outbox_rows.append(self._receipt_row(values, rows, now))
            status_of[request_id] = status
        count = self._update_many(conn, tasks, ("request_id", "system"), FINISH_COLUMNS, list(written.values()),
                                  guard="version")
        if count != len(written):  # cannot happen under the request locks
            raise StoreConflict("a task changed while its request was locked")
        self._update_many(conn, requests, ("request_id",), REQUEST_COLUMNS, updated)
        self._keep_order(conn, (row for request_id in changes for row in rows_of[request_id]))
        turns.release_turns(conn, {originals[r]["subject_ref"] for r, status in status_of.items()
                                   if status in states.TERMINAL_STATUSES and status != originals[r]["status"]})
        self._insert_many(conn, audit_events, audits)
        self._insert_many(conn, outbox, outbox_rows)
        for i, (claimed, _, _) in enumerate(results):
            if (claimed.request_id, claimed.system) not in written:
                continue
            request, status = originals[claimed.request_id], status_of[claimed.request_id]
            # ``closed`` once per request, on its last result here: end-to-end metrics count each request once.
            closed = last_of[claimed.request_id] == i and status != request["status"] \
                and status in states.TERMINAL_STATUSES
            finished[i] = Finished(status, closed, request["kind"],
                                   aware(request["requested_at"]) if request["requested_at"] else None)
        return finished


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
            if receipts.is_internal(system):
                # A person can vouch for a vendor, not for oubli's own step: confirmed by hand, ``_verify`` let an
                # erasure complete unchecked (Invariant 13) and ``_package`` an export complete with no package.
                raise StoreConflict(f"{system} is an internal step of oubli, not a system: it cannot be confirmed "
                                    "by hand; oubli retry runs it again")
            self._operate(conn, rows[0], states.OperatorConfirm(), actor, now, TaskUpdate(confirmed_by=actor),
                          note=note)
            self._refresh_request(conn, request, now, force_receipt=True)

    def _operate(self, conn: sa.Connection, row: Mapping[str, Any], event: states.Event, actor: str,
                 now: datetime, update: TaskUpdate, note: str | None = None) -> None:
        before = task_state(row)
        lease = aware(row["lease_expires_at"]) if row["lease_expires_at"] is not None else None
        if before.state is SystemState.RUNNING and lease is not None and lease > now:
            # A worker is calling the system right now. Taking the task from under it would drop the call's
            # real result and, if that ends the request, start the subject's next request (an erasure after
            # an export) while the call still runs. A dead worker's lease expires within lease_seconds.
            raise StoreConflict(f"system {row['system']} is running (attempt {before.attempts}) under a live "
                                f"lease until {iso(lease)}: wait for its result, then retry or confirm")
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



def _reference(value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]],
               own: Sequence[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a reference record for a dead letter too large to keep (as the relay's stand-in
    for one the broker refused): the DLQ's own headers, nothing of the sender's. The command itself is still in
    the commands topic at its ``x-oubli-source`` offset."""
    body, pointer = reference(value, key_bytes=len(key or b""), header_bytes=sum(len(k) + len(v) for k, v in headers),
                              kafka_error=None)
    return body, [*own, (REFERENCE, pointer)]


# Intake's and the harvest's reads, built once per dialect: building a statement and its cache key cost as much
# of the loop thread's CPU as some of them take to run (the tasks': ``StoreBase._task_rows_of``).
@functools.cache
def _locked_requests_statement(dialect: str) -> sa.Select[Any]:
    return (sa.select(requests).where(among_bound(dialect, requests.c.request_id, "ids"))
            .order_by(requests.c.request_id).with_for_update())
