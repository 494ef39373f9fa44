"""The pure state machine for system tasks and requests. No I/O; the clock is passed in.

``transition(task, event, now, policy)`` returns the task's next state or raises
``IllegalTransition``; ``request_status(...)`` derives a request's status from its tasks, so the two
never disagree. An async vendor job unfinished ``policy.vendor_wait`` after it started fails its task
(``vendor_wait_expired``), so nothing waits forever; nor does a task whose system no worker runs any more
(``Unconfigured``: ``not_configured``)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class SystemState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING_VENDOR = "waiting_vendor"
    FAILED = "failed"
    CONFIRMED = "confirmed"


class RequestStatus(StrEnum):
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    ACTION_REQUIRED = "action_required"
    COMPLETED = "completed"
    REJECTED = "rejected"


NOT_CONFIGURED = "not_configured"  # the error code of a task whose system no worker runs
TERMINAL_STATUSES = frozenset({RequestStatus.COMPLETED, RequestStatus.REJECTED})
CLAIMABLE = frozenset({SystemState.PENDING, SystemState.RETRYING, SystemState.WAITING_VENDOR})


class IllegalTransition(Exception):
    def __init__(self, state: SystemState, event: Event) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state}")
        self.state = state
        self.event = event


@dataclass(frozen=True)
class TaskState:
    state: SystemState = SystemState.PENDING
    attempts: int = 0
    max_attempts: int = 8
    next_attempt_at: datetime | None = None
    outcome: str | None = None
    vendor_ref: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    confirmed_at: datetime | None = None
    waiting_since: datetime | None = None  # first handed to an async vendor job; cleared once settled
    lease_losses: int = 0  # calls in a row whose worker died under them; any call that returns resets it


# Events ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """A worker takes the task to call its connector (or poll its vendor job)."""


@dataclass(frozen=True)
class Confirm:
    outcome: str
    vendor_ref: str | None = None


@dataclass(frozen=True)
class AwaitVendor:
    vendor_ref: str
    poll_after: float


@dataclass(frozen=True)
class Fail:
    code: str
    message: str
    retryable: bool
    retry_after: float | None = None
    counts_as_attempt: bool = True


@dataclass(frozen=True)
class LeaseExpired:
    """The worker that held the task vanished mid-call (or restarted: it reclaims its own leases)."""


@dataclass(frozen=True)
class StagingLost:
    """A confirmed export's staged files were lost before the package held them: the export is done again."""

    message: str


@dataclass(frozen=True)
class Unconfigured:
    """No worker runs the task's system: it was removed from the config while the task waited, and the task
    stayed due and unclaimed past ``worker.unconfigured_grace_seconds`` (``worker.store.unconfigured``)."""

    message: str


@dataclass(frozen=True)
class OperatorRetry:
    pass


@dataclass(frozen=True)
class OperatorConfirm:
    pass


Event = (Claim | Confirm | AwaitVendor | Fail | LeaseExpired | StagingLost | Unconfigured | OperatorRetry
         | OperatorConfirm)


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff; ``Retry-After`` is a floor, never shortened by jitter."""

    base_seconds: float = 2.0
    max_seconds: float = 3600.0
    jitter: Callable[[float], float] = dataclasses.field(default=lambda ceiling: random.uniform(0, ceiling))  # noqa: S311
    # How long an async vendor job may stay unfinished, from the first time the task waited on it.
    vendor_wait: timedelta = timedelta(days=14)
    # A lost lease gives its attempt back, so a call that kills its worker every time (a segfault,
    # an out-of-memory kill) would crash-loop the fleet forever: this many losses in a row fail it.
    max_lease_losses: int = 20

    def delay(self, attempts: int, retry_after: float | None) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempts - 1, 0))
        backoff = max(self.base_seconds / 2, self.jitter(ceiling))
        return max(backoff, retry_after or 0.0)


_TASK_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskState))


def _replace(task: TaskState, **changes: object) -> TaskState:
    """``dataclasses.replace`` for a ``TaskState``, at a quarter of its cost (1.0 against 4.1 µs): two run for
    every call a worker makes, on the loop thread. A ``TaskState`` has no ``__post_init__`` to skip."""
    if not _TASK_FIELDS.issuperset(changes):
        raise TypeError(f"TaskState has no field {sorted(set(changes) - _TASK_FIELDS)}")
    new = object.__new__(TaskState)
    new.__dict__.update(task.__dict__, **changes)
    return new


def transition(task: TaskState, event: Event, now: datetime, policy: RetryPolicy) -> TaskState:
    state = task.state
    match event:
        case Claim() if state in CLAIMABLE:
            polling = state is SystemState.WAITING_VENDOR
            return _replace(task, state=SystemState.RUNNING, next_attempt_at=None,
                            attempts=task.attempts if polling else task.attempts + 1)
        case Confirm(outcome=outcome, vendor_ref=vendor_ref) if state is SystemState.RUNNING:
            return _replace(task, state=SystemState.CONFIRMED, outcome=outcome, confirmed_at=now,
                            vendor_ref=vendor_ref or task.vendor_ref, error_code=None, error_message=None,
                            next_attempt_at=None, waiting_since=None, lease_losses=0)
        case AwaitVendor(vendor_ref=vendor_ref, poll_after=poll_after) if state is SystemState.RUNNING:
            return _await_vendor(_replace(task, lease_losses=0), vendor_ref, poll_after, now, policy)
        case Fail(retryable=True) if state is SystemState.RUNNING and task.vendor_ref and task.waiting_since:
            # A poll failed (the status endpoint's 5xx, 429 or timeout): the job goes on at the vendor, so the same
            # job is polled again after the backoff, as a lost lease does; submitting it anew would send a second
            # request to a vendor that may just have asked us to slow down.
            return _poll_failed(_replace(task, lease_losses=0), event, now, policy)
        case Fail() if state is SystemState.RUNNING:
            return _after_failure(_replace(task, lease_losses=0), event, now, policy)
        case LeaseExpired() if state is SystemState.RUNNING and task.lease_losses + 1 >= policy.max_lease_losses:
            return _replace(task, state=SystemState.FAILED, next_attempt_at=None, lease_losses=task.lease_losses + 1,
                            error_code="worker_lost_repeatedly",
                            error_message=f"the worker running this task stopped {task.lease_losses + 1} times in a "
                                          "row: the call may be what stops it")
        case LeaseExpired() if state is SystemState.RUNNING and task.vendor_ref and task.waiting_since:
            # It died while polling: poll the same vendor job again rather than start a second one.
            return _replace(task, state=SystemState.WAITING_VENDOR, next_attempt_at=now,
                            lease_losses=task.lease_losses + 1, error_code="lease_expired",
                            error_message="the worker polling this task stopped")
        case LeaseExpired() if state is SystemState.RUNNING:
            # The attempt is given back: a dead worker is no failure of the system, and a pod killed
            # again and again (a node drained, an OOM) must not use up a request's retries.
            return _replace(task, state=SystemState.RETRYING, next_attempt_at=now, attempts=max(task.attempts - 1, 0),
                            lease_losses=task.lease_losses + 1, error_code="lease_expired",
                            error_message="the worker running this task stopped")
        case StagingLost(message=message) if state is SystemState.CONFIRMED:
            # The system did its part: the redo gives the attempt back, as a lost lease does.
            return _replace(task, state=SystemState.RETRYING, next_attempt_at=now, attempts=max(task.attempts - 1, 0),
                            outcome=None, confirmed_at=None, error_code="export_staging_lost", error_message=message)
        case Unconfigured(message=message) if state in CLAIMABLE:
            # Nothing was called, so no attempt is spent; an async vendor job's id stays for the person who looks.
            return _replace(task, state=SystemState.FAILED, next_attempt_at=None, error_code=NOT_CONFIGURED,
                            error_message=message)
        case OperatorRetry() if state in {SystemState.FAILED, SystemState.RETRYING, SystemState.WAITING_VENDOR}:
            return _replace(task, state=SystemState.PENDING, attempts=0, next_attempt_at=now, waiting_since=None,
                            lease_losses=0)
        case OperatorConfirm() if state is not SystemState.CONFIRMED:
            return _replace(task, state=SystemState.CONFIRMED, outcome="manually_confirmed", confirmed_at=now,
                            next_attempt_at=None, error_code=None, error_message=None, waiting_since=None)
    raise IllegalTransition(state, event)


# Error codes of an attempt whose call may have reached the system though no result was recorded: its
# worker died under it (``lease_expired``), it was abandoned past its deadline, or the connector raised
# something unexpected (or met a store outage) part-way.
RESULT_UNKNOWN_CODES = frozenset({"lease_expired", "call_timeout", "unexpected_error", "store_unavailable"})
UNKNOWN_EARLIER_ATTEMPT = ("nothing was left to erase: an earlier attempt, whose result was lost, may have "
                           "erased it")


def settle_erasure_outcome(kind: str, before: TaskState, event: Event) -> tuple[Event, str | None]:
    """An erasure that finds nothing after an attempt whose result was lost is not ``not_found``.

    ``not_found`` tells the controller that no data was held. An idempotent erasure retried after its worker
    died mid-call (or after a call abandoned past its deadline) finds nothing precisely because the lost attempt
    erased it: the system's data is gone by our hand, so the confirmation is ``erased``, with a detail that
    says why. Returns the event to apply and that detail (None when nothing changes).
    """
    if kind == "erasure" and isinstance(event, Confirm) and event.outcome == "not_found" \
            and (before.lease_losses > 0 or before.error_code in RESULT_UNKNOWN_CODES):
        return Confirm("erased", event.vendor_ref), UNKNOWN_EARLIER_ATTEMPT
    return event, None


def _await_vendor(task: TaskState, vendor_ref: str, poll_after: float, now: datetime,
                  policy: RetryPolicy) -> TaskState:
    since = task.waiting_since or now
    if now - since >= policy.vendor_wait:
        days = policy.vendor_wait.total_seconds() / 86400
        return _replace(
            task, state=SystemState.FAILED, vendor_ref=vendor_ref, waiting_since=since, next_attempt_at=None,
            error_code="vendor_wait_expired",
            error_message=f"the vendor job was still unfinished {days:g} days after it was submitted",
        )
    return _replace(task, state=SystemState.WAITING_VENDOR, vendor_ref=vendor_ref, waiting_since=since,
                    next_attempt_at=now + timedelta(seconds=poll_after), error_code=None, error_message=None)


def _after_failure(task: TaskState, event: Fail, now: datetime, policy: RetryPolicy) -> TaskState:
    attempts = task.attempts if event.counts_as_attempt else max(task.attempts - 1, 0)
    if event.retryable and attempts < task.max_attempts:
        delay = policy.delay(attempts, event.retry_after) if event.counts_as_attempt else (event.retry_after or 0.0)
        return _replace(
            task, state=SystemState.RETRYING, attempts=attempts, error_code=event.code,
            error_message=event.message, next_attempt_at=now + timedelta(seconds=delay),
        )
    code = event.code if not event.retryable else "retries_exhausted"
    return _replace(task, state=SystemState.FAILED, attempts=attempts, error_code=code,
                    error_message=event.message, next_attempt_at=None)


def _poll_failed(task: TaskState, event: Fail, now: datetime, policy: RetryPolicy) -> TaskState:
    """Polls are no attempts (a job may take days), but a failed one is: a status endpoint that keeps failing runs
    out of attempts (``retries_exhausted``) like any call, instead of being polled until ``vendor_wait``."""
    attempts = task.attempts + 1 if event.counts_as_attempt else task.attempts
    if attempts >= task.max_attempts:
        return _replace(task, state=SystemState.FAILED, attempts=attempts, error_code="retries_exhausted",
                        error_message=event.message, next_attempt_at=None)
    delay = policy.delay(attempts, event.retry_after) if event.counts_as_attempt else (event.retry_after or 0.0)
    return _replace(task, state=SystemState.WAITING_VENDOR, attempts=attempts, error_code=event.code,
                    error_message=event.message, next_attempt_at=now + timedelta(seconds=delay))


def request_status(states: Iterable[SystemState], *, any_attempted: bool) -> RequestStatus:
    """A request is completed only when every task confirmed; a failed task needs a person."""
    states = list(states)
    if states and all(s is SystemState.CONFIRMED for s in states):
        return RequestStatus.COMPLETED
    if any(s is SystemState.FAILED for s in states):
        return RequestStatus.ACTION_REQUIRED
    if not any_attempted and all(s is SystemState.PENDING for s in states):
        return RequestStatus.ACCEPTED
    return RequestStatus.IN_PROGRESS
