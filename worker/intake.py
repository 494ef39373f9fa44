"""Intake: one consumed command becomes a durable request, or a DLQ record with a stable code.

``handle``/``handle_batch`` return only after the store committed, so the caller may then store the
offset. They never raise for anything about the record: a bad command is rejected with its code, an
exception becomes ``internal_error``, a data error ``store_rejected``. Only a store outage raises
(``StoreUnavailable``). With a signing secret, a bad signature goes to the DLQ only."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
import structlog

from worker import messages
from worker.core.errors import InvalidCommand, StoreUnavailable
from worker.deadletter.topic import replay_note, replay_of
from worker.messages import Command
from worker.receipts import IDENTITY_TASK, PACKAGE_TASK, VERIFY_TASK
from worker.store.faults import is_outage
from worker.store.repository import NewCommand, Recorded, Store

log = structlog.get_logger("oubli.intake")


class IntakeResult(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # rejected receipt + DLQ
    DEAD_LETTERED = "dead_lettered"  # DLQ only: the request id is unreadable or names a known request


@dataclass(frozen=True)
class BatchOutcome:
    """What ``handle_batch`` did: ``results`` for the leading messages that are recorded (committed), in order.

    ``outage`` is set when the store failed: the message at ``len(results)`` and every later one were not
    recorded, so the caller rewinds to it and acknowledges only the prefix. Without an outage, ``results``
    is shorter than the batch when the turn's time ran out (``Intake.turn_seconds``): the caller rewinds the
    same way, and takes the rest on its next turn.
    """

    results: list[IntakeResult]
    outage: StoreUnavailable | None = None


@dataclass(frozen=True)
class Message:
    value: bytes | None
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    source: str  # topic/partition/offset, for the DLQ header and logs
    # The Kafka client's error name (``_BAD_COMPRESSION``) when it could not read the record at ``source`` at all:
    # there is no key, value or header to look at, only the place to name in a DLQ row.
    unreadable: str | None = None


# What a record the client could not read is dead-lettered as. A record batch that decompresses past the
# consumer's ``receive.message.max.bytes`` (a few KiB on the wire, 100 MB and more inflated: a compression bomb)
# fails as _BAD_COMPRESSION, like a corrupt one; anything else the client cannot parse is undecodable.
UNREADABLE_CODES = {
    "_BAD_COMPRESSION": ("too_large", "the Kafka client could not decompress the record batch holding this record "
                                      "(larger than receive.message.max.bytes once decompressed, or corrupt); the "
                                      "record is still in the commands topic at x-oubli-source"),
}


# How long one ``handle_batch`` may go on before it hands the loop back. The loop renews the leases of the calls
# in flight and serves /healthz between batches: 500 hostile 64 KiB commands cost 10-20 s to decode, validate and
# dead-letter, and a batch that outlasted the leases (30 s by default) let another worker take over calls that
# were still running. Each batch records at least one message, so intake always moves on.
TURN_SECONDS = 5.0


class Intake:
    def __init__(
        self, store: Store, *, subject_key: bytes, signing_secret: bytes | None,
        systems: Mapping[str, int], due_days_default: int | None = None, export_enabled: bool = False,
        identity_enabled: bool = False, previous_secrets: Sequence[bytes] = (), verify_enabled: bool = False,
        turn_seconds: float = TURN_SECONDS,
    ) -> None:
        self.turn_seconds = turn_seconds
        self.store = store
        self.subject_key = subject_key
        self.signing_secret = signing_secret
        self.previous_secrets = tuple(previous_secrets)
        self.systems = dict(systems)  # system id -> max attempts
        self.due_days_default = due_days_default
        self.export_enabled = export_enabled
        self.identity_enabled = identity_enabled
        self.verify_enabled = verify_enabled  # an erasure's _verify step checks every internal system at the end

    def handle(self, message: Message, now: datetime, invalid: InvalidCommand | None = None) -> IntakeResult:
        """Records the message or dead-letters it; raises only ``StoreUnavailable``.

        Whatever goes wrong with the record itself (decoding, validation, date arithmetic, hashing,
        a store that refuses its data) ends in the DLQ with a stable code, never in an exception
        that would stop the worker on the same record forever. ``invalid``: why an authentic message was
        already found invalid (``handle_batch``), so that it is not decoded and validated a second time.
        """
        try:
            if invalid is not None:
                return self._reject(message, invalid, now, trusted=True)
            return self._handle(message, now)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the last resort: one record must not stop the fleet
            if is_outage(exc):
                raise StoreUnavailable(f"the store failed during intake ({type(exc).__name__})") from exc
            # The type only: an exception's message may quote the input.
            return self._poison(message, "internal_error", exc, now)

    def handle_batch(self, batch: Sequence[Message], now: datetime) -> BatchOutcome:
        """Records or dead-letters each message of ``batch``, in order; never raises for a record.

        Consecutive valid commands are recorded together, in one store transaction (``record_commands``).
        Should that transaction fail for its data rather than an outage, its commands are recorded one at
        a time instead, so that one bad record ends in the DLQ alone. A message that does not validate is
        handled alone, where it stands. Same contract as ``handle`` per message; a store outage, or the end of
        ``turn_seconds``, ends the batch early (see ``BatchOutcome``).
        """
        results: list[IntakeResult] = []
        chunk: list[tuple[Message, NewCommand]] = []
        in_chunk: set[str] = set()  # request ids: a second command of one id goes in the next transaction
        deadline = time.monotonic() + self.turn_seconds
        try:
            for message in batch:
                if (results or chunk) and time.monotonic() >= deadline:
                    break  # the rest is taken on the loop's next turn
                prepared = self._prepare(message)
                if not isinstance(prepared, NewCommand) or prepared.command.request_id in in_chunk:
                    self._record_chunk(chunk, now, results)
                    chunk, in_chunk = [], set()
                if not isinstance(prepared, NewCommand):
                    results.append(self.handle(message, now, invalid=prepared))
                else:
                    chunk.append((message, prepared))
                    in_chunk.add(prepared.command.request_id)
            self._record_chunk(chunk, now, results)
        except StoreUnavailable as outage:
            return BatchOutcome(results, outage)
        return BatchOutcome(results)

    def _prepare(self, message: Message) -> NewCommand | InvalidCommand | None:
        """The command to record; why an authentic message is invalid (the costly part of a hostile batch: its
        decoding and validation, done once); or None when the message needs ``handle``'s whole care."""
        try:
            if message.unreadable is not None or not self._authentic(message):
                return None
            try:
                command = self._parse(message)
                targets = self._targets(command)
            except InvalidCommand as invalid:
                return invalid
            return NewCommand(
                command=command, subject_ref=messages.subject_ref(self.subject_key, command.customer_id),
                digest=messages.body_digest(self.subject_key, command.body), targets=targets,
                note=replay_note(message.headers), replaces=replay_of(message.headers),
                earlier_digests=self._earlier_digests(command),
            )
        except Exception:  # noqa: BLE001 - handle() meets the same error again and deals with it
            return None

    def _record_chunk(self, chunk: Sequence[tuple[Message, NewCommand]], now: datetime,
                      results: list[IntakeResult]) -> None:
        """Records ``chunk`` in one transaction, appending each message's result as it is settled."""
        if not chunk:
            return
        try:
            recorded = self.store.record_commands([prepared for _, prepared in chunk], now)
        except Exception as exc:  # noqa: BLE001 - sorted below: an outage, or a record the store refused
            if is_outage(exc):
                raise StoreUnavailable(f"the store failed during intake ({type(exc).__name__})") from exc
            log.warning("intake_batch_refused", error_type=type(exc).__name__, size=len(chunk))
            for message, _ in chunk:  # one at a time: the record at fault ends in the DLQ alone
                results.append(self.handle(message, now))
            return
        for (message, prepared), outcome in zip(chunk, recorded, strict=True):
            results.append(self._settle(message, prepared, outcome, now))
        tally = Counter(outcome.value for outcome in recorded)
        log.info("commands_recorded", commands=len(chunk), **tally)

    def _settle(self, message: Message, prepared: NewCommand, recorded: Recorded, now: datetime) -> IntakeResult:
        command = prepared.command
        if recorded is Recorded.CONFLICT:
            return self._reject(message, InvalidCommand(
                "conflicting_duplicate", "a request with this request_id and a different body was already recorded",
                request_id=command.request_id), now, trusted=True)
        # A new command's own line is at debug (its audit trail has it, and a burst would write a line per
        # command; ``commands_recorded`` counts each batch): a duplicate or a replay is worth a look, so info.
        fields = {"request_id": command.request_id, "kind": command.kind, "outcome": recorded.value,
                  "systems": len(prepared.targets), "source": message.source}
        if recorded is Recorded.NEW and prepared.note is None:
            log.debug("command_recorded", **fields)
        else:
            log.info("command_recorded", **fields)
        return IntakeResult.ACCEPTED if recorded is Recorded.NEW else IntakeResult.DUPLICATE

    def _handle(self, message: Message, now: datetime) -> IntakeResult:
        if message.unreadable is not None:
            code, text = UNREADABLE_CODES.get(message.unreadable, (
                "invalid_json", f"the Kafka client could not read this record ({message.unreadable})"))
            return self._reject(message, InvalidCommand(code, text), now, trusted=False)
        # Authenticity first: until it is proven, nothing in the command (its request_id, its replay
        # headers) may reach the store, so an unsigned command cannot squat an id.
        if not self._authentic(message):
            return self._reject(message, InvalidCommand(
                "bad_signature", f"the {messages.SIGNATURE_HEADER} header is missing or does not match"), now,
                trusted=False)
        try:
            command = self._parse(message)
            targets = self._targets(command)
        except InvalidCommand as invalid:
            return self._reject(message, invalid, now, trusted=True)
        subject_ref = messages.subject_ref(self.subject_key, command.customer_id)
        digest = messages.body_digest(self.subject_key, command.body)
        try:
            recorded = self.store.record_command(
                command, subject_ref=subject_ref, digest=digest, targets=targets, now=now,
                note=replay_note(message.headers), replaces=replay_of(message.headers),
                earlier_digests=self._earlier_digests(command),
            )
        except sa.exc.SQLAlchemyError as exc:
            if is_outage(exc):
                raise StoreUnavailable(f"the store failed during intake ({type(exc).__name__})") from exc
            return self._poison(message, "store_rejected", exc, now)
        return self._settle(message, NewCommand(command=command, subject_ref=subject_ref, digest=digest,
                                                targets=targets), recorded, now)

    def _authentic(self, message: Message) -> bool:
        if self.signing_secret is None:
            return True
        signature = messages.header(message.headers, messages.SIGNATURE_HEADER)
        return messages.signed_by_any(message.value or b"", signature, (self.signing_secret, *self.previous_secrets))

    def _earlier_digests(self, command: Command) -> Callable[[], tuple[str, ...]]:
        # Called only for an id the store knows under another digest: a fresh command is hashed once.
        return lambda: messages.earlier_digests(self.subject_key, command.body)

    def _parse(self, message: Message) -> Command:
        document = messages.decode(message.value)
        # The signature was checked by _authentic, against the same bytes.
        return messages.parse(
            document, value=message.value or b"", signature=None, signing_secret=None,
            known_systems=frozenset(self.systems), due_days_default=self.due_days_default,
        )

    def _targets(self, command: Command) -> dict[str, int]:
        chosen = command.systems if command.systems is not None else tuple(self.systems)
        if not chosen:
            raise InvalidCommand("no_systems", "no system is configured for this request",
                                 request_id=command.request_id)
        targets = {system: self.systems[system] for system in chosen}
        if self.identity_enabled:
            # Vendor ids are read before any system runs: orders_db's erasure deletes them.
            targets[IDENTITY_TASK] = max(self.systems.values(), default=8)
        if command.kind == "export":
            if not self.export_enabled:
                raise InvalidCommand("export_not_configured", "this worker has no export storage configured",
                                     request_id=command.request_id)
            targets[PACKAGE_TASK] = max(self.systems.values(), default=8)
        elif self.export_enabled:  # an erasure's package step deletes the subject's earlier export packages
            targets[PACKAGE_TASK] = max(self.systems.values(), default=8)
        if command.kind == "erasure" and self.verify_enabled:
            targets[VERIFY_TASK] = max(self.systems.values(), default=8)
        return targets

    def _reject(self, message: Message, invalid: InvalidCommand, now: datetime, *, trusted: bool) -> IntakeResult:
        """DLQ record, plus a ``rejected`` receipt when the request id is readable and unknown.

        ``trusted``: the signature verified (or signing is off), so the replay headers may be honoured.
        """
        note = replay_note(message.headers) if trusted else None
        try:
            receipted = self.store.record_invalid(
                request_id=invalid.request_id, code=invalid.code, message=invalid.message, raw=message.value,
                key=message.key, headers=message.headers, source=message.source, now=now, note=note,
            )
        except Exception as exc:  # noqa: BLE001 - refused for the record's sake: fall back to a bare DLQ row
            if is_outage(exc):
                raise StoreUnavailable(f"the store failed during intake ({type(exc).__name__})") from exc
            self._bare_dead_letter(message, invalid.code, now, exc)
            receipted = False
        log.warning("command_rejected", request_id=invalid.request_id, code=invalid.code, error=invalid.message,
                    source=message.source, receipted=receipted)
        return IntakeResult.REJECTED if receipted else IntakeResult.DEAD_LETTERED

    def _poison(self, message: Message, code: str, exc: Exception, now: datetime) -> IntakeResult:
        """A record that raised: DLQ only, since what it names was never validated or could not be stored."""
        log.error("command_poison", code=code, error_type=type(exc).__name__, source=message.source)
        self._bare_dead_letter(message, code, now, exc)
        return IntakeResult.DEAD_LETTERED

    def _bare_dead_letter(self, message: Message, code: str, now: datetime, exc: Exception) -> None:
        """The DLQ row that cannot fail on the data: key and value as bytes, no headers of the sender's,
        an ASCII message naming only the exception's type, no request id, no audit event."""
        try:
            self.store.record_invalid(
                request_id=None, code=code, message=f"{type(exc).__name__} while taking the command in",
                raw=message.value, key=message.key, headers=(), source=message.source, now=now,
            )
        except Exception as failure:
            # Nothing of the record's is left in this row to blame: the store is at fault.
            log.error("dead_letter_failed", code=code, error_type=type(failure).__name__, source=message.source)
            raise StoreUnavailable(f"the store refused a bare DLQ row ({type(failure).__name__})") from failure
