"""Intake: one consumed command becomes a durable request, or a DLQ record with a stable code.

``handle`` returns only after the store committed, so the caller may then store the offset
(SPEC invariant 1). It never raises for bad input (invariant 4); a store outage does raise, and
the message is then not acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog

from worker import messages
from worker.deadletters import replay_note, replay_of
from worker.errors import InvalidCommand
from worker.messages import Command
from worker.receipts import IDENTITY_TASK, PACKAGE_TASK
from worker.store.repository import Recorded, Store

log = structlog.get_logger("oubli.intake")


class IntakeResult(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # rejected receipt + DLQ
    DEAD_LETTERED = "dead_lettered"  # DLQ only: the request id is unreadable or names a known request


@dataclass(frozen=True)
class Message:
    value: bytes | None
    key: bytes | None
    headers: Sequence[tuple[str, bytes]]
    source: str  # topic/partition/offset, for the DLQ header and logs


class Intake:
    def __init__(
        self, store: Store, *, subject_key: bytes, signing_secret: bytes | None,
        systems: Mapping[str, int], due_days_default: int | None = None, export_enabled: bool = False,
        identity_enabled: bool = False, previous_secrets: Sequence[bytes] = (),
    ) -> None:
        self.store = store
        self.subject_key = subject_key
        self.signing_secret = signing_secret
        self.previous_secrets = tuple(previous_secrets)
        self.systems = dict(systems)  # system id -> max attempts
        self.due_days_default = due_days_default
        self.export_enabled = export_enabled
        self.identity_enabled = identity_enabled

    def handle(self, message: Message, now: datetime) -> IntakeResult:
        try:
            command = self._parse(message)
            targets = self._targets(command)
        except InvalidCommand as invalid:
            return self._reject(message, invalid, now)
        recorded = self.store.record_command(
            command, subject_ref=messages.subject_ref(self.subject_key, command.customer_id),
            digest=messages.body_digest(self.subject_key, command.body), targets=targets, now=now,
            note=replay_note(message.headers), replaces=replay_of(message.headers),
        )
        if recorded is Recorded.CONFLICT:
            return self._reject(message, InvalidCommand(
                "conflicting_duplicate", "a request with this request_id and a different body was already recorded",
                request_id=command.request_id), now)
        log.info("command_recorded", request_id=command.request_id, kind=command.kind, outcome=recorded.value,
                 systems=len(targets), source=message.source)
        return IntakeResult.ACCEPTED if recorded is Recorded.NEW else IntakeResult.DUPLICATE

    def _parse(self, message: Message) -> Command:
        document = messages.decode(message.value)
        signature = dict(message.headers).get(messages.SIGNATURE_HEADER)
        return messages.parse(
            document, value=message.value or b"", signature=signature, signing_secret=self.signing_secret,
            known_systems=frozenset(self.systems), due_days_default=self.due_days_default,
            previous_secrets=self.previous_secrets,
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
        return targets

    def _reject(self, message: Message, invalid: InvalidCommand, now: datetime) -> IntakeResult:
        receipted = self.store.record_invalid(
            request_id=invalid.request_id, code=invalid.code, message=invalid.message, raw=message.value,
            key=message.key, headers=message.headers, source=message.source, now=now,
            note=replay_note(message.headers),
        )
        log.warning("command_rejected", request_id=invalid.request_id, code=invalid.code, error=invalid.message,
                    source=message.source, receipted=receipted)
        return IntakeResult.REJECTED if receipted else IntakeResult.DEAD_LETTERED
