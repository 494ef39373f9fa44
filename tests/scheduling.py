"""A quota-limited vendor stand-in and a fake-clock driver for Store + Executor, for the scheduling tests.

``QuotaVendor`` is Google Analytics' shape reduced to its limits: one deletion per call, behind a
real ``Gate`` on the store's shared limits, with a small daily quota. ``Fleet`` runs one or more
executors on one store and moves a fake clock to the next due task whenever nothing is due, so
weeks of quota windows pass in seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from connectors.ratelimit import Gate
from worker import messages, states
from worker.config import Topics
from worker.core.connector import CallResult, ExportWriter, Result, Subject
from worker.core.limits import Capacity, QuotaSpec, call_priority
from worker.core.timefmt import aware
from worker.executor import Executor
from worker.store.deferrals import ReserveDeferral
from worker.store.ratelimits import StoreLimits
from worker.store.records import subject_json
from worker.store.repository import ClaimedTask, Store
from worker.store.schema import requests, tasks
from worker.support import build_command

KEY = b"scheduling-test-key"


class MutableClock:
    def __init__(self, start: datetime) -> None:
        self.at = start
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.at

    def set(self, moment: datetime) -> None:
        with self.lock:
            self.at = max(self.at, moment)


@dataclass(frozen=True)
class Call:
    request_id: str
    priority: str
    at: datetime
    worker: int = 0


class QuotaVendor:
    """A deletion API with a daily quota: every call passes a real gate first, then is recorded."""

    def __init__(self, system: str, engine: sa.Engine, clock: Callable[[], datetime], *, daily_quota: int,
                 share: float, calls: list[Call], lock: threading.Lock, tz: str = "UTC", worker: int = 0) -> None:
        self.system = system
        self.worker = worker
        self.clock = clock
        self.gate = Gate(system, buckets=(), quotas=((f"{system}:property:1", QuotaSpec(daily_quota, tz)),),
                         now=clock, limits=StoreLimits(engine), background_share=share)
        self.calls, self.lock = calls, lock

    def erase(self, subject: Subject) -> CallResult:
        self.gate.admit()
        with self.lock:
            self.calls.append(Call(subject.request_id, call_priority(), self.clock(), self.worker))
        return Result("requested", detail="deletion request accepted")

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return Result("requested")

    def capacity(self) -> Capacity:
        return self.gate.capacity()

    def close(self) -> None:
        pass


def record(store: Store, *, request_id: str, targets: Mapping[str, int], now: datetime, due_at: datetime,
           priority: str | None = None, last_activity_at: datetime | None = None) -> None:
    body = build_command(kind="erasure", customer_id=f"C-{request_id}", request_id=request_id,
                         requested_at=now, due_at=due_at, requested_by="scheduling-test")
    if priority is not None:
        body["priority"] = priority
    if last_activity_at is not None:
        body["subject"]["last_activity_at"] = last_activity_at.isoformat()
    parsed = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset(targets))
    store.record_command(parsed, subject_ref=messages.subject_ref(KEY, parsed.customer_id),
                         digest=messages.body_digest(KEY, body), targets=targets, now=now)


def seed(store: Store, rows: Sequence[tuple[str, datetime]], *, system: str, now: datetime,
         priority: str = "background") -> None:
    """Records many (request_id, due_at) requests at once, as intake would but in one transaction: the
    scheduling tests are about what happens after intake, and intake has its own."""
    requests_rows, task_rows = [], []
    for seq, (request_id, due_at) in enumerate(rows, start=1):
        command = messages.Command(
            request_id=request_id, kind="erasure", customer_id=f"C-{request_id}", emails=(), phones=(),
            identifiers={}, requested_at=now, requested_by="retention-sweeper", due_at=due_at, systems=None,
            reason=None, body={}, priority=priority)
        ref = messages.subject_ref(KEY, command.customer_id)
        requests_rows.append({"seq": seq, "request_id": request_id, "kind": "erasure", "status": "accepted",
                              "subject_ref": ref, "body_digest": request_id, "subject_json": subject_json(command, ref),
                              "requested_by": command.requested_by, "requested_at": now, "due_at": due_at,
                              "priority": priority, "created_at": now, "updated_at": now})
        task_rows.append({"request_id": request_id, "system": system, "request_seq": seq, "state": "pending",
                          "attempts": 0, "max_attempts": 8, "next_attempt_at": now, "records": 0, "version": 0,
                          # copies of the request's priority and deadline, where the claims keep them
                          **({"background": priority == "background"} if "background" in tasks.c else {}),
                          **({"due_at": due_at} if "due_at" in tasks.c else {})})
    with store.engine.begin() as conn:
        conn.execute(requests.insert(), requests_rows)
        conn.execute(tasks.insert(), task_rows)


class Fleet:
    """``workers`` executors (each its own engine and store actor) draining one store on a fake clock."""

    def __init__(self, url: str, clock: MutableClock, *, system: str, daily_quota: int, share: float,
                 workers: int = 1, concurrency: int = 8,
                 skip: Callable[[ClaimedTask, datetime], Result | None] | None = None,
                 engine_factory: Callable[[str], sa.Engine]) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        lock = threading.Lock()
        self.executors: list[Executor] = []
        self.stores: list[Store] = []
        for index in range(workers):
            engine = engine_factory(url)
            store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor=f"worker-{index}")
            vendor = QuotaVendor(system, engine, clock, daily_quota=daily_quota, share=share, calls=self.calls,
                                 lock=lock, worker=index)
            self.stores.append(store)
            self.executors.append(Executor(
                store, {system: vendor}, concurrency={system: concurrency}, max_in_flight=concurrency * 2,
                lease_seconds=300, clock=clock, on_outcome=ReserveDeferral(engine, clock), skip=skip))
        self.vendor_capacity = vendor.capacity()

    @property
    def store(self) -> Store:
        return self.stores[0]

    def run_until(self, end: datetime, *, on_idle: Callable[[datetime], None] | None = None) -> None:
        """Ticks every executor until nothing is due before ``end``, moving the clock to each next due time."""
        turn = 0
        while True:
            turn += 1  # each worker in turn ticks first, as workers of a fleet would race for the work
            order = self.executors[turn % len(self.executors):] + self.executors[:turn % len(self.executors)]
            for executor in order:  # record every finished call first: a finished call holds its system's slot
                executor.tick(accept_new=False)
                executor.nudge()  # no idle pause in real time: the fake clock decides what is due
            started = sum(executor.tick() for executor in order)
            if any(executor.busy() for executor in self.executors):
                while any(executor.calls_running() for executor in self.executors):
                    self.executors[0].wait_for_calls(0.01)
                continue
            if started:
                continue
            following = self._next_due()
            if following is None or following > end:
                self.clock.set(end)
                return
            self.clock.set(following)

    def _next_due(self) -> datetime | None:
        with self.store.engine.connect() as conn:
            moment = conn.execute(sa.select(sa.func.min(tasks.c.next_attempt_at)).where(
                tasks.c.state.in_([states.SystemState.PENDING, states.SystemState.RETRYING]))).scalar()
        if moment is None:
            return None
        return max(aware(moment), self.clock())

    def close(self) -> None:
        for executor in self.executors:
            executor.shutdown()


def per_day(calls: Sequence[Call], priority: str | None = None) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for call in calls:
        if priority is None or call.priority == priority:
            counts[call.at.date()] = counts.get(call.at.date(), 0) + 1
    return counts


def first_call(calls: Sequence[Call]) -> dict[str, datetime]:
    found: dict[str, datetime] = {}
    for call in calls:
        found.setdefault(call.request_id, call.at)
    return found


def days(n: float) -> timedelta:
    return timedelta(days=n)
