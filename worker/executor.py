"""The fan-out executor: runs due system tasks concurrently, driven entirely from the store.

``tick`` (from the main loop) never blocks on a connector: calls run in a thread pool bounded per system
(``concurrency``) and overall (``max_in_flight``), results are written back on a later tick, and backoff
is a due time in the store. Every call holds a lease renewed by ``tick``; a result whose lease was lost
is never recorded. A restarted worker reclaims its dead incarnation's leases at once.

A call still running ``call_timeout`` seconds after it started is abandoned: its attempt is recorded as a
retryable ``call_timeout`` (the lease goes with it), and its slot goes to other work. The thread cannot be
stopped, so the call may still reach the vendor: that is safe because every connector call is idempotent
(an erasure or an export done twice leaves the same result), and the retry waits at least ``call_timeout``
more, so the two seldom overlap. Whatever it returns late is dropped by the pool, never recorded."""

from __future__ import annotations

import dataclasses
import errno
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import structlog

from worker import failpoints, metrics, personal, states, vendorrefs
from worker.callpool import CallPool
from worker.core.connector import OUTCOMES, Connector, ExportWriter, IdentityLookup, Pending, Result, Retained
from worker.core.errors import (
    ConnectorError,
    NeedsPersonError,
    PermanentError,
    QuotaDeferred,
    RetryableError,
    StagingLost,
    Throttled,
    stable_code,
)
from worker.core.limits import set_call_priority
from worker.core.timefmt import iso
from worker.receipts import IDENTITY_TASK, PACKAGE_TASK, VERIFY_TASK, is_internal
from worker.stall import error_kind, error_sqlstate
from worker.store.faults import is_outage
from worker.store.identity import IdentityLock
from worker.store.repository import ClaimedTask, Finished, Store, TaskUpdate

log = structlog.get_logger("oubli.executor")


class StagedExport(ExportWriter, Protocol):
    def seal(self) -> None:
        """Records what the connector staged, once its export returned (the packager checks against it)."""


class ExportPackager(Protocol):
    def writer(self, request_id: str, system: str) -> StagedExport: ...

    def build_package(self, request_id: str, records: Mapping[str, int], now: datetime) -> Any: ...

    def discard_staging(self, request_id: str) -> None: ...


Outcome = tuple[states.Event, TaskUpdate]


class TaskVerifier(Protocol):
    """Runs the ``_verify`` step of a batch of erasures (``worker.verification.VerificationStep``); blocks. Each task's
    outcome, or the connector error its checks raised; raises what stops the whole batch."""

    def run_many(self, tasks: Sequence[ClaimedTask]) -> Sequence[Outcome | ConnectorError]: ...


# What one pool thread runs: one task, or a batch of ``_verify`` tasks (the step checks a set in one go).
Job = tuple[ClaimedTask, ...]

# Results recorded per store transaction: a few statements whatever the number (``Store.finish_many``
# writes in bulk), so one transaction takes every finished call of a tick, up to this many.
HARVEST_BATCH = 2000
CLAIM_IDLE = timedelta(milliseconds=100)
# How often a worker looks for a subject's request held after its turn came (a race between two workers'
# transactions; ``worker.store.turns``): the most such a request can wait beyond its turn. Tasks of a system
# no longer configured (``worker.store.unconfigured``) are looked for on the same timer.
TURNS_SWEEP_SECONDS = 15.0
CALL_TIMEOUT = "call_timeout"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# After shutdown, how long a handed-back lease still holds: the process exits well within it.
HAND_BACK_SECONDS = 2.0


# A loop turn with calls in flight and nothing else to do waits for this share of them, not for the first to return
# (up to the loop's short poll): a turn per returned call spent a turn's round trips on one or two results, and took
# the GIL from the calls still running. A lone call's result is recorded as soon as it returns.
GATHER_SHARE = 4

INTERNAL_STEPS_MAX = 8
# The most ``_verify`` tasks in one job. A burst's checks then cost a store read and a call per system for each
# batch, not for each request, and ``internal_limit`` jobs at once check up to this many times more requests.
VERIFY_BATCH = 32


def internal_limit(max_in_flight: int) -> int:
    """How many of each of oubli's own steps (``_verify``, ``_identity``, ``_package``) run at once. Each works on the
    store from its pool thread, so the store's connection pool is sized from this (``worker.compose``)."""
    return max(2, min(max_in_flight // 8, INTERNAL_STEPS_MAX))


class Executor:
    def __init__(
        self, store: Store, connectors: Mapping[str, Connector], *, concurrency: Mapping[str, int],
        max_in_flight: int, lease_seconds: float, clock: Callable[[], datetime], verifier: TaskVerifier | None = None,
        exports: ExportPackager | None = None, crash: failpoints.Failpoints | None = None,
        on_outcome: Callable[[ClaimedTask, states.Event, float, Finished | None], None] | None = None,
        identity: IdentityLookup | None = None, identity_kinds: Sequence[str] = (),
        skip: Callable[[ClaimedTask, datetime], Result | None] | None = None, call_timeout: float | None = None,
        unconfigured_grace: timedelta | None = None,
    ) -> None:
        self.store = store
        self.skip = skip  # confirms a task without a call, e.g. worker.retention.vendorkeep
        self.connectors = dict(connectors)
        internal = internal_limit(max_in_flight)
        self.limits = {**concurrency, PACKAGE_TASK: internal, IDENTITY_TASK: internal,
                       VERIFY_TASK: internal * VERIFY_BATCH}
        self.verify_jobs_limit = internal  # each job holds a store connection (worker.compose sizes the pool)
        self.verify_jobs = 0  # running, or ended and not harvested yet
        self.verifier = verifier
        self.identity = identity
        self.identity_kinds = tuple(identity_kinds)
        self.max_in_flight = max_in_flight
        self.lease = timedelta(seconds=lease_seconds)
        self.clock = clock
        self.exports = exports
        self.crash = crash or failpoints.Failpoints(frozenset())
        self.on_outcome = on_outcome
        # All threads start now: started on demand, a new one came at each new high of calls at once, and a
        # worker's memory crept up for hours (bench/README.md, RSS +15.7 % over 200,000 requests).
        # As many spares as slots: a vendor that hangs every call at most doubles the threads; past that, the
        # slots of calls still hung stay lost (``_launch`` claims less) until those calls return.
        # A batch of n checks gets n calls' deadlines: one slow check at a time must not fail the whole batch.
        self.pool: CallPool[Job, list[Outcome]] = CallPool(max_in_flight, self._call, name="oubli-call",
                                                            spare=max_in_flight, weight=len)
        self.call_timeout = call_timeout
        # None: tasks of systems this worker does not run are left alone (a test's partial fleet).
        self.unconfigured_grace = unconfigured_grace
        # Looked at a few times per deadline, at most once a second: a scan takes the pool's lock.
        self.deadline_every = min(1.0, call_timeout / 4) if call_timeout else 0.0
        self.next_deadline_check = time.monotonic()
        # (request_id, system) -> the call's task and when it started; a task is in flight at most once.
        self.in_flight: dict[tuple[str, str], tuple[ClaimedTask, datetime]] = {}
        self.ended: list[tuple[ClaimedTask, Outcome]] = []  # taken from the pool, not recorded yet
        self.last_renewal = clock()
        self.identity_lock = IdentityLock(store.engine, store.actor)
        self.reclaimed: bool = False
        self.claim_after: tuple[float, datetime] | None = None  # no claim before, after one that found nothing
        self.next_turns_sweep = time.monotonic() + TURNS_SWEEP_SECONDS

    # --- the loop's entry points ----------------------------------------------------------

    def tick(self, *, accept_new: bool = True) -> int:
        """Records finished calls, renews leases, then starts due tasks. Returns calls started."""
        self.record()
        return self.launch() if accept_new else 0

    def record(self) -> None:
        """Records finished calls and renews leases (the first half of a tick: the loop lets the relay
        publish the receipts it wrote before it claims)."""
        now = self.clock()
        self._reclaim_once(now)
        self._abandon_overdue()
        self._harvest(now)
        if now - self.last_renewal > self.lease / 3 and self.in_flight:
            self.store.renew_leases([task for task, _ in self.in_flight.values()], now + self.lease)
            self.last_renewal = now

    def launch(self) -> int:
        """Starts due tasks (the second half of a tick). Returns calls started."""
        now = self.clock()
        self._reclaim_once(now)
        self._sweep(now)
        return self._launch(now)

    def _sweep(self, now: datetime) -> None:
        """Every ``TURNS_SWEEP_SECONDS``: turns missed in a race, tasks left blocked after their siblings confirmed,
        and tasks of systems no worker runs."""
        if time.monotonic() < self.next_turns_sweep:
            return
        self.next_turns_sweep = time.monotonic() + TURNS_SWEEP_SECONDS
        released = self.store.release_missed_turns()
        if released:
            self.claim_after = None
            log.info("held_turns_released", tasks=released)
        unblocked = self.store.unblock_missed()
        if unblocked:
            self.claim_after = None
            log.warning("blocked_tasks_released", tasks=unblocked)  # a write that left them behind: worth a look
        if self.unconfigured_grace is not None:
            failed = self.store.fail_unconfigured(self.limits, now=now, grace=self.unconfigured_grace)
            if failed:
                log.warning("unconfigured_tasks_failed", tasks=len(failed), systems=sorted({s for _, s in failed}))

    def capacity_lost(self) -> bool:
        """Every slot is held by an abandoned call that has not returned: this worker can start nothing."""
        return self.pool.lost >= self.max_in_flight

    def busy(self) -> int:
        return len(self.in_flight)

    def wait_for_calls(self, timeout: float) -> bool:
        """Blocks until a share of the calls in flight (``GATHER_SHARE``, at least one) returned, so that their
        results can be recorded together, or ``timeout`` passes."""
        return self.pool.wait(timeout, count=max(1, self.pool.outstanding() // GATHER_SHARE))

    def calls_running(self) -> int:
        """Calls that have not returned yet (``busy`` counts the returned ones until they are recorded)."""
        return self.pool.running()

    def nudge(self) -> None:
        """New tasks may be due (intake recorded commands): the next tick claims whatever the idle pause."""
        self.claim_after = None

    def shutdown(self) -> None:
        """Called after draining: anything still running is handed back, to be redone elsewhere.

        Its call dies with the process (the pool's threads are daemons). Its lease ends ``HAND_BACK_SECONDS``
        from now, time for the process to exit, instead of up to ``lease_seconds`` after the last renewal:
        on a rolling restart the new pod has a new worker_id and cannot reclaim the old one's leases at once.
        """
        if self.in_flight:
            try:
                handed = self.store.hand_back([task for task, _ in self.in_flight.values()],
                                              self.clock() + timedelta(seconds=HAND_BACK_SECONDS))
                log.info("leases_handed_back", tasks=handed)
            except Exception as exc:  # noqa: BLE001 - the store is down: the leases run out by themselves
                log.warning("leases_not_handed_back", error_type=type(exc).__name__)
        self.pool.shutdown()
        self.identity_lock.release()

    # --- internals -------------------------------------------------------------------------

    def _reclaim_once(self, now: datetime) -> None:
        """Before the first claim, whichever half of a tick comes first."""
        if not self.reclaimed:
            self._reclaim(now)

    def _reclaim(self, now: datetime) -> None:
        """Once, before the first claim: a dead incarnation's leases, if no live process shares our id."""
        if self.identity_lock.acquire():
            count = self.store.reclaim_own_leases(now)
            if count:
                log.info("leases_reclaimed", worker_id=self.store.actor, tasks=count)
        else:
            log.warning("worker_id_in_use", worker_id=self.store.actor)
        self.reclaimed = True

    def _abandon_overdue(self) -> None:
        if self.call_timeout is None or time.monotonic() < self.next_deadline_check:
            return
        self.next_deadline_check = time.monotonic() + self.deadline_every
        for job, seconds in self.pool.abandon_overdue(self.call_timeout):
            self._job_ended(job)
            message = f"no answer within {self.call_timeout * len(job):g} s: the call was abandoned"
            # A floor on the backoff: the abandoned call gets another full deadline to end before the retry.
            event = states.Fail(CALL_TIMEOUT, message, retryable=True, retry_after=self.call_timeout)
            for task in job:
                self.ended.append((task, (event, TaskUpdate())))
                log.warning("call_abandoned", request_id=task.request_id, system=task.system, attempt=task.attempt,
                            seconds=round(seconds, 1), abandoned=self.pool.abandoned(), slots_lost=self.pool.lost)
        metrics.CALLS_ABANDONED.set(self.pool.abandoned())

    def _launch(self, now: datetime) -> int:
        room = self.max_in_flight - len(self.in_flight) - self.pool.lost
        if room <= 0:
            return 0
        # A claim that found nothing is not repeated on every turn of a busy loop (one transaction each):
        # until a result, a nudge or CLAIM_IDLE later (a retry's backoff may end meanwhile).
        if self.claim_after is not None and time.monotonic() < self.claim_after[0] and now < self.claim_after[1]:
            return 0
        claimed = self.store.claim_due(now=now, lease_until=now + self.lease, limits=self._limits_left(), room=room,
                                       held=self.in_flight.keys())
        claimed = claimed[:room]
        for task in claimed:
            self.in_flight[(task.request_id, task.system)] = (task, now)
        for job in self._jobs(claimed):
            self.pool.submit(job)
        # Both clocks: a test's injected clock that jumps ahead claims at once, a frozen one waits real time.
        self.claim_after = None if claimed else (time.monotonic() + CLAIM_IDLE.total_seconds(), now + CLAIM_IDLE)
        return len(claimed)

    def _limits_left(self) -> Mapping[str, int]:
        """Each system's concurrency less this worker's abandoned calls to it that have not returned. The
        store no longer counts them (their attempt was recorded as call_timeout), but a hung call still holds
        a connection at the system: without this, every deadline would hand a system that hangs one more
        call, past its limit, until the worker's spare threads ran out."""
        hung = Counter(task.system for job in self.pool.abandoned_calls() for task in job)
        if self.verify_jobs >= self.verify_jobs_limit:
            hung[VERIFY_TASK] = self.limits[VERIFY_TASK]  # no thread for another batch: claim none
        if not hung:
            return self.limits
        return {system: limit - hung[system] for system, limit in self.limits.items()}

    def _jobs(self, claimed: Sequence[ClaimedTask]) -> list[Job]:
        """A job per task, but the ``_verify`` tasks share as few jobs as the free batch slots allow, each of up to
        ``VERIFY_BATCH`` (more only when the slots are short), in claim order."""
        jobs: list[Job] = [(task,) for task in claimed if task.system != VERIFY_TASK]
        verify = [task for task in claimed if task.system == VERIFY_TASK]
        if verify:
            count = max(1, min(self.verify_jobs_limit - self.verify_jobs, -(-len(verify) // VERIFY_BATCH)))
            size = -(-len(verify) // count)
            batches = [tuple(verify[i:i + size]) for i in range(0, len(verify), size)]
            self.verify_jobs += len(batches)
            jobs += batches
        return jobs

    def _job_ended(self, job: Job) -> None:
        if job[0].system == VERIFY_TASK:
            self.verify_jobs -= 1

    def _harvest(self, now: datetime) -> None:
        for job, outcomes in self.pool.take(HARVEST_BATCH - len(self.ended)):
            self._job_ended(job)
            self.ended += zip(job, outcomes, strict=True)
        if not self.ended:
            return
        self.claim_after = None  # a result may unblock a sibling (a final step) or a subject's next request
        results = [(task, event, update) for task, (event, update) in self.ended]
        # One transaction for the lot. If the store is down this raises and every result stays in
        # ``ended`` for the next tick.
        finished = self.store.finish_many(results, now)
        self.ended = []
        tally: dict[str, int] = {}
        # Bound once for the harvest: each call on the module's lazy logger builds a bound logger first, and
        # with ten lines a request (all at debug, so dropped) that was the most of their cost.
        logger = log.bind()
        for (task, event, _), recorded in zip(results, finished, strict=True):
            started = self.in_flight.pop((task.request_id, task.system))[1]
            if self.on_outcome is not None:
                self.on_outcome(task, event, (now - started).total_seconds(), recorded)
            result = type(event).__name__
            tally[result] = tally.get(result, 0) + 1
            # A recorded confirmation is routine (the audit trail has it): a line each only at debug, where a
            # burst would write ten per request. Anything else is what an operator looks for, so always.
            if isinstance(event, states.Confirm) and recorded is not None:
                logger.debug("system_call_finished", request_id=task.request_id, system=task.system,
                             attempt=task.attempt, result=result, recorded=True, outcome=event.outcome)
            else:
                logger.info("system_call_finished", request_id=task.request_id, system=task.system,
                            attempt=task.attempt, result=result, recorded=recorded is not None, **_event_fields(event))
        log.info("calls_recorded", calls=len(results), results=tally, in_flight=len(self.in_flight))

    def _call(self, job: Job) -> list[Outcome]:
        """Runs in a pool thread. Never raises: every failure becomes a ``Fail`` event."""
        self.crash.hit(failpoints.AFTER_CLAIM)
        if job[0].system == VERIFY_TASK and self.verifier is not None:
            outcomes = self._verify(job)
        else:
            outcomes = [self._call_one(task) for task in job]
        self.crash.hit(failpoints.AFTER_CONNECTOR)
        return outcomes

    def _verify(self, job: Job) -> list[Outcome]:
        assert self.verifier is not None  # noqa: S101 - _call checked
        try:
            results = list(self.verifier.run_many(job))
            if len(results) != len(job):
                raise RuntimeError("the verification step answered for another number of requests")
        except BaseException as exc:  # noqa: BLE001 - as a single call's: the whole batch fails alike
            return [_redacted(task, self._failure(task, exc)) for task in job]
        return [_redacted(task, self._failure(task, result) if isinstance(result, BaseException) else result)
                for task, result in zip(job, results, strict=True)]

    def _call_one(self, task: ClaimedTask) -> Outcome:
        set_call_priority(task.subject.priority)  # background calls spend the reserve-limited quota share
        try:
            outcome = _checked_outcome(task, _checked_vendor_ref(task, self._dispatch(task)))
        except BaseException as exc:  # noqa: BLE001 - a connector bug (even a sys.exit) must not kill the worker
            outcome = self._failure(task, exc)
        return _redacted(task, outcome)

    def _failure(self, task: ClaimedTask, exc: BaseException) -> Outcome:
        """The ``Fail`` (or, for a vendor job still running, the wait) that a call's exception stands for."""
        if isinstance(exc, Throttled | QuotaDeferred):
            if task.polling and task.vendor_ref:  # the vendor job is still running: just look again later
                return states.AwaitVendor(task.vendor_ref, exc.retry_after or 1.0), TaskUpdate(detail=exc.message)
            return (states.Fail(stable_code(exc.code), exc.message, retryable=True, retry_after=exc.retry_after,
                                counts_as_attempt=False), TaskUpdate(detail=exc.message))
        if isinstance(exc, RetryableError):
            return (states.Fail(stable_code(exc.code), exc.message, retryable=True, retry_after=exc.retry_after),
                    TaskUpdate())
        if isinstance(exc, PermanentError | NeedsPersonError):
            return states.Fail(stable_code(exc.code), exc.message, retryable=False), TaskUpdate()
        if isinstance(exc, Exception) and is_outage(exc):
            # An internal step (package, identity, verification) reading oubli's own store during its outage
            # (connectors wrap their databases' errors): no connector bug. It still counts as an attempt, since
            # what is_outage calls one includes a statement that times out every time.
            log.warning("store_unavailable", during=task.system, request_id=task.request_id,
                        error_type=error_kind(exc), sqlstate=error_sqlstate(exc))
            return states.Fail("store_unavailable", f"{task.system}: the store was unreachable "
                               f"({error_kind(exc)})", retryable=True), TaskUpdate()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            # The worker's own disk (an export's staging files), not the connector: an operator's to fix,
            # and the call can succeed once there is room, so it is retried like any outage.
            code = errno.errorcode[exc.errno]
            log.error("disk_full", request_id=task.request_id, system=task.system, errno=code)
            return states.Fail("disk_full", f"{task.system}: no space left on the worker's disk ({code})",
                               retryable=True), TaskUpdate()
        # A connector bug. The message of an arbitrary exception may quote personal data: keep only its type.
        log.error("connector_bug", request_id=task.request_id, system=task.system, error_type=type(exc).__name__)
        return states.Fail("unexpected_error", f"{task.system} raised {type(exc).__name__}",
                           retryable=True), TaskUpdate()

    def _dispatch(self, task: ClaimedTask) -> Outcome:
        if task.system == PACKAGE_TASK and task.kind == "erasure":  # earlier export packages are personal data
            from worker.export.forget import forget_earlier_exports

            count = forget_earlier_exports(self.store.engine, self.exports, task.request_id)
            return states.Confirm("erased" if count else "not_found"), TaskUpdate(records=count)
        if task.system == PACKAGE_TASK:
            return self._package(task)
        if task.system == IDENTITY_TASK:
            return self._resolve_identity(task)
        if task.system == VERIFY_TASK:  # with a verifier, ``_call`` runs its batch
            raise PermanentError("verification is not configured on this worker", code="not_configured")
        connector = self.connectors.get(task.system)
        if connector is None:
            raise PermanentError(f"system {task.system} is not configured on this worker", code="not_configured")
        skipped = self.skip(task, self.clock()) if self.skip is not None and not task.polling else None
        if skipped is not None:
            return _confirmation(skipped)
        if task.polling and task.vendor_ref:
            result = connector.poll(task.subject, task.vendor_ref)
        elif task.kind == "erasure":
            result = connector.erase(task.subject)
        else:
            if self.exports is None:
                raise PermanentError("exports are not configured on this worker", code="not_configured")
            writer = self.exports.writer(task.request_id, task.system)
            result = connector.export(task.subject, writer)
            writer.seal()
        if isinstance(result, Pending):
            return states.AwaitVendor(result.vendor_ref, result.poll_after), TaskUpdate()
        return _confirmation(_checked_retained(task, result))

    def _resolve_identity(self, task: ClaimedTask) -> Outcome:
        if self.identity is None:
            raise PermanentError("no identity lookup is configured on this worker", code="not_configured")
        merged = {kind: list(ids) for kind, ids in task.subject.identifiers.items()}
        for kind in self.identity_kinds:
            found = self.identity.identifiers(task.subject, kind)
            merged[kind] = list(dict.fromkeys([*merged.get(kind, []), *found]))
        merged = {kind: ids for kind, ids in merged.items() if ids}
        count = sum(len(ids) for ids in merged.values())
        return states.Confirm("resolved"), TaskUpdate(identifiers=merged, records=count)

    def _package(self, task: ClaimedTask) -> Outcome:
        if self.exports is None:
            raise PermanentError("exports are not configured on this worker", code="not_configured")
        _, task_rows, _ = self.store.get(task.request_id)
        records = {row["system"]: row["records"] for row in task_rows if not is_internal(row["system"])}
        try:
            info = self.exports.build_package(task.request_id, records, self.clock())
        except StagingLost as exc:
            # Those systems export again; this step, due only once every system confirmed, waits for them.
            self.store.restage(task.request_id, exc.systems, exc.message, self.clock())
            raise
        # The package holds everything now; a rebuild after a crash reuses it without the staging copies.
        self.exports.discard_staging(task.request_id)
        export = {
            "url": info.url, "expires_at": iso(info.expires_at), "sha256": info.sha256,
            "size_bytes": info.size_bytes, "object_key": info.object_key,
        }
        return states.Confirm("exported"), TaskUpdate(export=export, records=sum(records.values()))


def _checked_vendor_ref(task: ClaimedTask, outcome: Outcome) -> Outcome:
    """Every vendor ref a call returns passes here before the store (``worker.vendorrefs``). One that could be
    personal data, or that receipt.v1 cannot carry, fails the call as the vendor's protocol error it is:
    permanent, like every other answer without what the vendor documents, so a person looks (the runbook's
    ``vendor_protocol``). The value is dropped, never stored, logged or quoted."""
    event = outcome[0]
    if isinstance(event, states.Confirm) and event.vendor_ref in (None, ""):
        return outcome  # no ref: the task keeps the one it had (``states.transition``)
    if not isinstance(event, states.Confirm | states.AwaitVendor):
        return outcome
    reason = vendorrefs.refusal(event.vendor_ref, task.subject)
    if reason is None:
        return outcome
    raise PermanentError(f"{task.system}: the vendor answered {reason}; it was not kept", code="vendor_protocol")


def _checked_outcome(task: ClaimedTask, outcome: Outcome) -> Outcome:
    """A system's confirmation names one of the connectors' outcomes (``OUTCOMES``) and holds fields of the types
    ``Result`` declares, or the call fails as the permanent ``vendor_protocol``. A plug-in connector's types are
    not checked at run time: another word reached the receipt, whose ``outcome`` is an enum; an ``expected_by``
    that was no datetime raised in the loop thread while the result was recorded, at every restart. Internal
    steps have outcomes of their own, and no entry in the receipt. A detail that is no text is dropped. Retained
    entries are checked before they are converted (``_checked_retained``)."""
    event, update = outcome
    if not isinstance(event, states.Confirm) or is_internal(task.system):
        return outcome
    if not (isinstance(event.outcome, str) and event.outcome in OUTCOMES):
        raise PermanentError(f"{task.system}: the connector confirmed with an outcome receipt.v1 does not know; "
                             "it was not kept", code="vendor_protocol")
    records = update.records
    if not (update.expected_by is None or isinstance(update.expected_by, datetime)) \
            or not (records is None or (type(records) is int and 0 <= records <= _MAX_RECORDS)):
        raise PermanentError(f"{task.system}: the connector's confirmation holds an expected_by or a record count "
                             "of the wrong type; it was not kept", code="vendor_protocol")
    if update.detail is not None and not isinstance(update.detail, str):  # a remark only: the confirmation stands
        return event, dataclasses.replace(update, detail=None)
    return outcome


_MAX_RECORDS = 2**31 - 1  # tasks.records is an INTEGER


def _checked_retained(task: ClaimedTask, result: Result) -> Result:
    """What a connector says it retained is a tuple (or list) of ``Retained`` whose ``category`` and ``legal_basis``
    are text and whose ``until`` is a date (a datetime is one: its own calendar day counts), or the call fails as
    the permanent ``vendor_protocol``, like ``_checked_outcome``'s other wrong types. A plug-in connector's types
    are not checked at run time: an int or a dict went into the store as it came and broke the closed receipt.v1
    on the compacted topic; an ``until`` that was no date raised as a retryable connector bug, at every attempt.
    The values are never quoted."""
    retained: object = result.retained
    if isinstance(retained, tuple | list) and all(_well_typed(entry) for entry in retained):
        return result
    raise PermanentError(f"{task.system}: the connector's confirmation holds a retained entry of the wrong type; "
                         "it was not kept", code="vendor_protocol")


def _well_typed(entry: object) -> bool:
    return (isinstance(entry, Retained) and isinstance(entry.category, str) and isinstance(entry.legal_basis, str)
            and isinstance(entry.until, date))


def _redacted(task: ClaimedTask, outcome: Outcome) -> Outcome:
    """The call's texts without personal data (``worker.personal``), before the store, the logs and the receipt
    see them: a connector's error message, its detail and what it says it retained. Codes and outcomes are
    checked against their patterns elsewhere; these are free text."""
    # Text only (a plug-in connector's types are not checked): this runs after the call's own error handling, in
    # the call's thread, and must not raise.
    event, update = outcome
    if isinstance(event, states.Fail) and isinstance(event.message, str):
        message = personal.redact(event.message, task.subject)
        if message != event.message:
            event = dataclasses.replace(event, message=message)
    changes: dict[str, Any] = {}
    if isinstance(update.detail, str):
        detail = personal.redact(update.detail, task.subject)
        if detail != update.detail:
            changes["detail"] = detail
    if update.retained:
        retained = [{name: personal.redact(value, task.subject)
                     if name in _RETAINED_TEXTS and isinstance(value, str) else value
                     for name, value in entry.items()} for entry in update.retained]
        if retained != [dict(entry) for entry in update.retained]:
            changes["retained"] = retained
    return (event, dataclasses.replace(update, **changes)) if changes else (event, update)


_RETAINED_TEXTS = frozenset({"category", "legal_basis"})  # "until" is a date the executor wrote


def _confirmation(result: Result) -> Outcome:
    update = TaskUpdate(
        # A datetime is a date, but receipt.v1 wants the day alone: its own, not UTC's.
        retained=[{"category": r.category, "legal_basis": r.legal_basis,
                   "until": (r.until.date() if isinstance(r.until, datetime) else r.until).isoformat()}
                  for r in result.retained],
        expected_by=result.expected_by, detail=result.detail, records=result.records,
    )
    return states.Confirm(result.outcome, result.vendor_ref), update


def _event_fields(event: states.Event) -> dict[str, Any]:
    fields = dataclasses.asdict(event)
    fields.pop("message", None)  # already PII-free, but the code is what dashboards group by
    return fields
