"""Recovery in seconds, against the real PostgreSQL with a fake clock: expired leases
come before any backlog, a restarted worker reclaims its own leases at once (never while another live
process holds its id), a long call keeps its lease, a lost lease is never recorded, and a vendor job
that never finishes ends in ``vendor_wait_expired``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devkit.pipeline import record
from worker import states
from worker.config import Topics
from worker.core.connector import CallResult, ExportWriter, Pending, Result, Subject
from worker.core.errors import RetryableError
from worker.core.timefmt import utcnow
from worker.executor import Executor
from worker.receipts import VERIFY_TASK
from worker.store import db
from worker.store.identity import IdentityLock
from worker.store.records import StoreConflict
from worker.store.repository import Store, TaskUpdate
from worker.store.schema import tasks

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Blocking:
    """A connector whose erase waits until the test lets it go; counts the calls it started."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0

    def erase(self, subject: Subject) -> CallResult:
        self.started += 1
        self.release.wait(30)
        return Result("erased")

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        raise NotImplementedError

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NeverDone(Blocking):
    """An async vendor whose job never finishes."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    def erase(self, subject: Subject) -> CallResult:
        return Pending("job-1", poll_after=86400)

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        self.polls += 1
        return Pending(vendor_ref, poll_after=86400)


def _store(url: str, actor: str, policy: states.RetryPolicy | None = None) -> Store:
    engine = db.create_engine(url)
    db.migrate(engine)
    return Store(engine, topics=Topics(), policy=policy or states.RetryPolicy(), actor=actor)


def _executor(store: Store, connector: Any, clock: Clock, system: str = "slow") -> Executor:
    return Executor(store, {system: connector}, concurrency={system: 4}, max_in_flight=4, lease_seconds=LEASE,
                    clock=clock)


def _until(condition: Callable[[], bool], step: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        step()
        time.sleep(0.01)


def _task(store: Store, request_id: str, system: str = "slow") -> dict[str, Any]:
    return next(t for t in store.get(request_id)[1] if t["system"] == system)


def test_expired_leases_are_claimed_before_a_larger_backlog(pg_url: str) -> None:
    dead, alive = _store(pg_url, "dead"), _store(pg_url, "alive")
    now = utcnow()
    first = record(dead, {"slow": 3}, now=now - timedelta(hours=1), customer_id="C-first")
    [held] = dead.claim_due(now=now, lease_until=now + timedelta(seconds=LEASE), limits={"slow": 1}, room=1)
    assert held.request_id == first
    # Twenty due tasks that were due long before the lease ran out: far more than the query's LIMIT.
    for i in range(20):
        record(alive, {"slow": 3}, now=now - timedelta(minutes=30 - i), customer_id=f"C-backlog-{i}")
    later = now + timedelta(seconds=LEASE + 1)
    claimed = alive.claim_due(now=later, lease_until=later + timedelta(seconds=LEASE), limits={"slow": 1}, room=1)
    assert [t.request_id for t in claimed] == [first], "the dead worker's task waited behind the backlog"
    assert dead.finish(held, states.Confirm("erased"), TaskUpdate(), later) is None, "a lost lease was recorded"
    actions = [e["action"] for e in alive.get(first)[2] if e["system"] == "slow"]
    assert actions == ["claimed", "lease_expired", "claimed"]


def test_a_restarted_worker_reclaims_its_own_leases_at_once(pg_url: str) -> None:
    clock = Clock()
    before = _store(pg_url, "pod-7")
    request_id = record(before, {"slow": 3}, now=clock(), customer_id="C-restart")
    stuck = Blocking()
    first = _executor(before, stuck, clock)
    _until(lambda: stuck.started == 1, first.tick)
    old = first.in_flight and next(iter(first.in_flight.values()))[0]
    assert old
    first.identity_lock.release()  # what the kernel does for a SIGKILLed process: its session ends

    clock.advance(1)  # one second later, far inside the 30 s lease
    after = _store(pg_url, "pod-7")
    resumed = Blocking()
    resumed.release.set()
    second = _executor(after, resumed, clock)
    _until(lambda: _task(after, request_id)["state"] == "confirmed", second.tick)
    assert resumed.started == 1
    stuck.release.set()  # the dead incarnation's call, had it been alive, can no longer be recorded
    assert before.finish(old, states.Confirm("erased"), TaskUpdate(), clock()) is None
    events = [(e["action"], e["actor"]) for e in after.get(request_id)[2] if e["system"] == "slow"]
    assert events == [("claimed", "pod-7"), ("lease_expired", "pod-7"), ("claimed", "pod-7"), ("confirm", "pod-7")]
    second.shutdown()
    first.shutdown()


def test_no_reclaim_while_another_live_process_holds_the_id(pg_url: str) -> None:
    clock = Clock()
    store = _store(pg_url, "pod-8")
    request_id = record(store, {"slow": 3}, now=clock(), customer_id="C-twin")
    stuck = Blocking()
    alive = _executor(store, stuck, clock)
    _until(lambda: stuck.started == 1, alive.tick)

    twin_calls = Blocking()
    twin = _executor(_store(pg_url, "pod-8"), twin_calls, clock)
    clock.advance(LEASE / 2)
    for _ in range(5):
        twin.tick()
    assert not twin.identity_lock.acquire()
    assert twin_calls.started == 0, "a twin took a task its live namesake was running"
    assert _task(store, request_id)["state"] == "running"
    stuck.release.set()
    _until(lambda: _task(store, request_id)["state"] == "confirmed", alive.tick)
    alive.shutdown()
    twin.shutdown()


def test_a_long_call_keeps_its_lease_and_a_lost_lease_is_never_recorded(pg_url: str) -> None:
    clock = Clock()
    store = _store(pg_url, "pod-1")
    other = _store(pg_url, "pod-2")
    request_id = record(store, {"slow": 3}, now=clock(), customer_id="C-long")
    slow = Blocking()
    executor = _executor(store, slow, clock)
    _until(lambda: slow.started == 1, executor.tick)
    for _ in range(12):  # two minutes of fake time, four leases long
        clock.advance(LEASE / 3 + 0.5)
        executor.tick()
        expires = _task(store, request_id)["lease_expires_at"]
        assert expires.astimezone(clock().tzinfo) > clock() + timedelta(seconds=LEASE / 2)
        assert other.claim_due(now=clock(), lease_until=clock() + timedelta(seconds=LEASE), limits={"slow": 4},
                               room=4) == []
    # Now the worker stalls (no tick renews) past its lease, and another worker takes the task over.
    clock.advance(LEASE + 1)
    [taken] = other.claim_due(now=clock(), lease_until=clock() + timedelta(seconds=LEASE), limits={"slow": 4},
                              room=4)
    slow.release.set()
    _until(lambda: not executor.busy(), executor.tick)
    task = _task(store, request_id)
    assert (task["state"], task["lease_owner"], task["version"]) == ("running", "pod-2", taken.version)
    assert other.finish(taken, states.Confirm("erased"), TaskUpdate(), clock()) is not None
    assert [e["action"] for e in store.get(request_id)[2] if e["system"] == "slow"].count("confirm") == 1
    executor.shutdown()


def test_a_vendor_job_that_never_finishes_ends_in_action_required(pg_url: str) -> None:
    clock = Clock()
    policy = states.RetryPolicy(vendor_wait=timedelta(days=14))
    store = _store(pg_url, "pod-1", policy)
    request_id = record(store, {"vendor": 3}, now=clock(), customer_id="C-vendor")
    vendor = NeverDone()
    executor = _executor(store, vendor, clock, system="vendor")
    submitted = clock()
    _until(lambda: _task(store, request_id, "vendor")["state"] == "waiting_vendor", executor.tick)
    for day in range(1, 20):
        clock.advance(86400)  # the vendor asked to be polled again a day later
        _until(lambda: vendor.polls == day and not executor.busy(), executor.tick)  # noqa: B023 - used at once
        if _task(store, request_id, "vendor")["state"] == "failed":
            break
    task = _task(store, request_id, "vendor")
    assert (task["state"], task["error_code"]) == ("failed", "vendor_wait_expired")
    assert vendor.polls == 14, "polled daily until the 14th day"
    with store.engine.connect() as conn:
        since = conn.execute(sa.select(tasks.c.waiting_since).where(tasks.c.request_id == request_id)).scalar_one()
    assert since.astimezone(submitted.tzinfo) == submitted
    receipt = store.receipt(request_id)
    assert receipt["status"] == "action_required"
    assert receipt["systems"][0]["error"]["code"] == "vendor_wait_expired"
    executor.shutdown()


class FlakyStatus(Blocking):
    """An async vendor whose status endpoint fails (a 429 with Retry-After) on the first poll, then says done."""

    def __init__(self) -> None:
        super().__init__()
        self.erases = 0
        self.polls = 0

    def erase(self, subject: Subject) -> CallResult:
        self.erases += 1
        return Pending(f"job-{self.erases}", poll_after=60)

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        self.polls += 1
        if self.polls == 1:
            raise RetryableError("vendor: request status retrieve got HTTP 429", retry_after=120,
                                 code="vendor_rate_limited")
        return Result("requested", vendor_ref=vendor_ref)


def test_a_poll_that_fails_polls_the_same_vendor_job_again_after_the_backoff(pg_url: str) -> None:
    """A 429 or a 5xx from a vendor's status endpoint says nothing about the job, which goes on at the vendor: it is
    polled again once Retry-After has passed, never submitted anew (a second removal request to a vendor that just
    asked us to slow down), and the failure is counted and shown meanwhile."""
    clock = Clock()
    store = _store(pg_url, "pod-1")
    request_id = record(store, {"vendor": 3}, now=clock(), customer_id="C-flaky")
    vendor = FlakyStatus()
    executor = _executor(store, vendor, clock, system="vendor")
    _until(lambda: _task(store, request_id, "vendor")["state"] == "waiting_vendor", executor.tick)
    clock.advance(60)
    _until(lambda: vendor.polls == 1 and not executor.busy(), executor.tick)
    task = _task(store, request_id, "vendor")
    assert (task["state"], task["vendor_ref"], task["error_code"]) == ("waiting_vendor", "job-1", "vendor_rate_limited")
    assert task["next_attempt_at"].astimezone(clock().tzinfo) >= clock() + timedelta(seconds=120), "Retry-After"
    assert task["attempts"] == 2, "a failed poll counts: a status endpoint that keeps failing ends in action_required"
    clock.advance(121)
    _until(lambda: _task(store, request_id, "vendor")["state"] == "confirmed", executor.tick)
    assert (vendor.erases, vendor.polls) == (1, 2), "the job was submitted once and polled again"
    assert _task(store, request_id, "vendor")["vendor_ref"] == "job-1"
    executor.shutdown()


class StoreGone:
    """An internal step (here ``_verify``) that reads oubli's own store from its thread, during a store outage."""

    def __init__(self) -> None:
        self.runs = 0

    def run_many(self, tasks: Any) -> Any:
        self.runs += 1
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))


def test_a_store_outage_during_an_internal_step_is_reported_as_such_not_as_a_connector_bug(pg_url: str) -> None:
    """The export package, the identity lookup and the verification read oubli's store from a call thread. Its
    outage there was reported as the ``unexpected_error`` of a ``connector_bug``: at 3 a.m., a bug to hunt in code
    that has none. It is ``store_unavailable`` now, retried with backoff like any outage (an attempt each: a
    statement that times out every time must still end in action_required)."""
    clock = Clock()
    store = _store(pg_url, "pod-1")
    request_id = record(store, {VERIFY_TASK: 3}, now=clock(), customer_id="C-outage")
    step = StoreGone()
    executor = Executor(store, {}, concurrency={}, max_in_flight=4, lease_seconds=LEASE, clock=clock, verifier=step)
    _until(lambda: _task(store, request_id, VERIFY_TASK)["state"] == "retrying", executor.tick)
    task = _task(store, request_id, VERIFY_TASK)
    assert (task["error_code"], task["attempts"]) == ("store_unavailable", 1)
    assert "server closed" not in (task["error_message"] or ""), "never the driver's message"
    assert task["next_attempt_at"].astimezone(clock().tzinfo) > clock(), "with backoff"
    executor.shutdown()


def test_the_identity_lock_is_exclusive_per_worker_id_and_freed_with_its_holder(pg_url: str, tmp_path: Any) -> None:
    for url in (pg_url, f"sqlite:///{tmp_path / 'store.db'}"):
        engine = db.create_engine(url)
        first, twin, other = IdentityLock(engine, "pod-1"), IdentityLock(engine, "pod-1"), IdentityLock(engine, "pod-2")
        assert first.acquire() and first.acquire()
        assert not twin.acquire()
        assert other.acquire()
        first.release()
        assert twin.acquire()
        for lock in (twin, other):
            lock.release()
        engine.dispose()


def test_a_call_whose_worker_dies_under_it_again_and_again_ends_in_action_required(pg_url: str) -> None:
    policy = states.RetryPolicy(max_lease_losses=3)
    stores = [_store(pg_url, f"pod-{n}", policy) for n in range(4)]
    now = utcnow()
    request_id = record(stores[0], {"slow": 8}, now=now, customer_id="C-poison-call")
    for store in stores:  # each claims after the previous holder's lease ran out, as if it had died
        claimed = store.claim_due(now=now, lease_until=now + timedelta(seconds=LEASE), limits={"slow": 1}, room=1)
        now += timedelta(seconds=LEASE + 1)
        if store is stores[-1]:
            assert claimed == [], "the third lost call in a row is not handed to a fourth worker"
        else:
            assert [t.request_id for t in claimed] == [request_id]
    task = _task(stores[-1], request_id)
    assert (task["state"], task["error_code"], task["lease_losses"], task["attempts"]) == (
        "failed", "worker_lost_repeatedly", 3, 1)
    assert stores[-1].receipt(request_id)["status"] == "action_required"
    stores[-1].operator_retry(request_id, None, actor="ops", now=now)
    assert _task(stores[-1], request_id)["lease_losses"] == 0


def test_an_erasure_that_finds_nothing_after_a_lost_attempt_is_erased_not_not_found(db_url: str) -> None:
    """A worker killed mid-erasure (after the system acted, before its result was stored): the retry finds
    nothing left, because the lost attempt erased it. The receipt and the audit trail must not tell the
    controller that no data was held (``not_found``); an export's ``not_found`` and a first attempt's stay."""
    dead, alive = _store(db_url, "dead"), _store(db_url, "alive")
    now = utcnow()
    lease = timedelta(seconds=LEASE)
    erasure = record(dead, {"slow": 3}, now=now, customer_id="C-lost")
    export = record(dead, {"slow": 3}, now=now, customer_id="C-lost-export", kind="export")
    fresh = record(dead, {"slow": 3}, now=now, customer_id="C-fresh")
    held = dead.claim_due(now=now, lease_until=now + lease, limits={"slow": 3}, room=3)
    assert {t.request_id for t in held} == {erasure, export, fresh}
    later = now + lease + timedelta(seconds=1)
    taken = {t.request_id: t for t in alive.claim_due(now=later, lease_until=later + lease, limits={"slow": 3},
                                                     room=3)}
    assert set(taken) == {erasure, export, fresh}
    for request_id in (erasure, export):
        assert alive.finish(taken[request_id], states.Confirm("not_found"), TaskUpdate(), later) is not None

    receipt = alive.receipt(erasure)
    [system] = [s for s in receipt["systems"] if s["system"] == "slow"]
    assert system["outcome"] == "erased"
    assert system["detail"] == states.UNKNOWN_EARLIER_ATTEMPT
    confirm = [e for e in alive.get(erasure)[2] if e["action"] == "confirm"]
    assert [e["detail"] for e in confirm] == [f"erased: {states.UNKNOWN_EARLIER_ATTEMPT}"]
    # An export reads: finding nothing on the retry still means nothing was held.
    assert [s["outcome"] for s in alive.receipt(export)["systems"] if s["system"] == "slow"] == ["not_found"]

    # A first attempt that finds nothing is what not_found is for.
    other = record(alive, {"slow": 3}, now=later, customer_id="C-never-held")
    [first] = [t for t in alive.claim_due(now=later, lease_until=later + lease, limits={"slow": 3}, room=3)
               if t.request_id == other]
    assert alive.finish(first, states.Confirm("not_found"), TaskUpdate(), later) is not None
    assert [s["outcome"] for s in alive.receipt(other)["systems"] if s["system"] == "slow"] == ["not_found"]


def test_an_operator_cannot_take_a_task_from_under_a_live_call(db_url: str) -> None:
    """``oubli confirm`` (or ``retry``) while a worker's call runs is refused: accepting it dropped the call's
    result and, as it ended the export, let the subject's erasure start while the export's call still ran
    (invariant 7). Once the lease has run out (the worker died), the operator may confirm."""
    worker, operator = _store(db_url, "pod-1"), _store(db_url, "sre")
    now = utcnow()
    lease = timedelta(seconds=LEASE)
    export = record(worker, {"slow": 3}, now=now, customer_id="C-op", kind="export", systems=["slow"])
    erasure = record(worker, {"slow": 3}, now=now, customer_id="C-op", systems=["slow"])
    [call] = worker.claim_due(now=now, lease_until=now + lease, limits={"slow": 3}, room=3)
    assert call.request_id == export
    for act in (lambda: operator.operator_confirm(export, "slow", actor="sre", note="vendor letter", now=now),
                lambda: operator.operator_retry(export, "slow", actor="sre", now=now)):
        with pytest.raises(StoreConflict, match="running"):
            act()
    assert _task(operator, export)["lease_owner"] == "pod-1"
    assert worker.claim_due(now=now, lease_until=now + lease, limits={"slow": 3}, room=3) == [], \
        "the erasure started while the export's call ran"
    assert worker.finish(call, states.Confirm("exported"), TaskUpdate(records=1), now) is not None
    assert _task(operator, export)["outcome"] == "exported"

    # A task whose worker died (its lease ran out) can be confirmed by hand.
    [second] = worker.claim_due(now=now, lease_until=now + lease, limits={"slow": 3}, room=3)
    assert second.request_id == erasure
    later = now + lease + timedelta(seconds=1)
    operator.operator_confirm(erasure, "slow", actor="sre", note="vendor letter", now=later)
    assert _task(operator, erasure)["outcome"] == "manually_confirmed"
    assert worker.finish(second, states.Confirm("erased"), TaskUpdate(), later) is None


def test_a_call_still_running_after_the_drain_is_handed_back_at_shutdown(pg_url: str) -> None:
    """SIGTERM: a call longer than drain_seconds dies with the process. Its lease is handed back as the worker
    shuts down, so a worker with another id (a rolling restart's new pod) takes it over in seconds, not a whole
    lease later; never before the dying process has had time to exit."""
    clock = Clock()
    store, other = _store(pg_url, "pod-old"), _store(pg_url, "pod-new")
    request_id = record(store, {"slow": 3}, now=clock(), customer_id="C-drain")
    slow = Blocking()
    executor = _executor(store, slow, clock)
    _until(lambda: slow.started == 1, executor.tick)
    [(old, _)] = executor.in_flight.values()
    executor.shutdown()
    limits = {"slow": 4}
    assert other.claim_due(now=clock() + timedelta(seconds=1), lease_until=clock() + timedelta(seconds=LEASE),
                           limits=limits, room=4) == [], "taken over while the old process may still be exiting"
    soon = clock() + timedelta(seconds=3)
    [taken] = other.claim_due(now=soon, lease_until=soon + timedelta(seconds=LEASE), limits=limits, room=4)
    assert taken.request_id == request_id
    slow.release.set()
    assert store.finish(old, states.Confirm("erased"), TaskUpdate(), soon) is None
    actions = [e["action"] for e in other.get(request_id)[2] if e["system"] == "slow"]
    assert actions == ["claimed", "lease_expired", "claimed"]
