"""What the store hands back and takes in: claimed tasks, task updates, outcomes, and its errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker import states
from worker.core.connector import Subject
from worker.core.timefmt import aware
from worker.messages import Command
from worker.states import RequestStatus, SystemState, TaskState

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
    # A clean ``_verify`` step: each checked system and its PII-free counts, audited as ``verified`` in the
    # transaction that records the step's result (one fewer transaction per erasure than a write of their own).
    verified: Mapping[str, str] | None = None


@dataclass(frozen=True)
class NewCommand:
    """A valid command for ``Store.record_commands``: what ``record_command`` takes, as one value."""

    command: Command
    subject_ref: str
    digest: str
    targets: Mapping[str, int]
    note: str | None = None  # PII-free, joins the accepted audit event (a replay's provenance)
    replaces: str | None = None  # the rejected request a DLQ replay carries out under this new id
    # The same command's other digests, as earlier versions stored them (``messages.earlier_digests``): worked out
    # only when its id is known under another digest.
    earlier_digests: Callable[[], Collection[str]] = tuple


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


def task_state(row: Mapping[str, Any]) -> TaskState:
    return TaskState(
        state=SystemState(row["state"]), attempts=row["attempts"], max_attempts=row["max_attempts"],
        next_attempt_at=aware(row["next_attempt_at"]) if row["next_attempt_at"] else None,
        outcome=row["outcome"], vendor_ref=row["vendor_ref"], error_code=row["error_code"],
        error_message=row["error_message"],
        confirmed_at=aware(row["confirmed_at"]) if row["confirmed_at"] else None,
        waiting_since=aware(row["waiting_since"]) if row.get("waiting_since") else None,
        lease_losses=row.get("lease_losses") or 0,
    )


def subject_json(command: Command, subject_ref: str) -> str:
    return json.dumps({
        "customer_id": command.customer_id, "emails": list(command.emails), "phones": list(command.phones),
        "identifiers": {k: list(v) for k, v in command.identifiers.items()}, "subject_ref": subject_ref,
        # Travel with the subject to the connector's gate and the retention policy; purged with it.
        "priority": command.priority,
        "last_activity_at": command.last_activity_at.isoformat() if command.last_activity_at else None,
    })


def subject_of(request_id: str, subject_json: str) -> Subject:
    data = json.loads(subject_json)
    return Subject(
        request_id=request_id, subject_ref=data["subject_ref"], customer_id=data["customer_id"],
        emails=tuple(data["emails"]), phones=tuple(data["phones"]),
        identifiers={k: tuple(v) for k, v in data["identifiers"].items()},
        priority=data.get("priority", "standard"),  # rows recorded before priorities had none
        last_activity_at=aware(datetime.fromisoformat(data["last_activity_at"]))
        if data.get("last_activity_at") else None,
    )
