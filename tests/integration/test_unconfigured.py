"""A system removed from the config: its waiting tasks fail ``not_configured`` after the grace, on both stores.

Claims only consider configured systems, so such a task was never claimed again: the request stayed open
for good and held every later request of its subject. Now, once due and unclaimed past
``worker.unconfigured_grace_seconds``, it fails (one audit event, the request ``action_required``, a receipt
in the outbox); before the grace nothing changes (a rolling deploy that adds the system), and a task running
under a live lease is never touched."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY, record
from worker import messages, states
from worker.config import Topics
from worker.core.connector import CallResult, ExportWriter, Result, Subject
from worker.core.timefmt import utcnow
from worker.executor import Executor
from worker.store import db
from worker.store.repository import NewCommand, Recorded, Store, TaskUpdate
from worker.store.schema import audit_events, outbox, tasks
from worker.support import build_command

GRACE = timedelta(minutes=15)
EMAIL = "marie.unconfigured@example.fr"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> Any:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Erases:
    def erase(self, subject: Subject) -> CallResult:
        return Result("erased")

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        raise NotImplementedError

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _store(url: str, actor: str = "worker-old") -> Store:
    engine = db.create_engine(url)
    db.migrate(engine)
    return Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor=actor)


def _new(clock: Clock) -> NewCommand:
    body = build_command(kind="erasure", customer_id="C-dropped", emails=[EMAIL], requested_by="test-suite",
                         requested_at=clock.now)
    command = messages.parse(body, value=b"", signature=None, signing_secret=None,
                             known_systems=frozenset({"alpha", "beta"}))
    return NewCommand(command=command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), "C-dropped"),
                      digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets={"alpha": 3, "beta": 3})


def _alpha_only(store: Store, clock: Clock) -> Executor:
    """A worker whose config no longer names beta."""
    return Executor(store, {"alpha": Erases()}, concurrency={"alpha": 2}, max_in_flight=4, lease_seconds=30,
                    clock=clock, unconfigured_grace=GRACE)


def _turn(executor: Executor) -> None:
    """Ticks until the worker's calls are recorded, with its periodic sweep due on the first tick."""
    executor.next_turns_sweep = 0.0
    executor.nudge()  # the clock is frozen between turns: no idle pause after a claim that found nothing
    executor.tick()
    for _ in range(500):
        if not executor.busy():
            return
        executor.wait_for_calls(0.05)
        executor.tick()
    raise AssertionError("the calls did not end")


def _task(store: Store, request_id: str, system: str) -> dict[str, Any]:
    return next(t for t in store.get(request_id)[1] if t["system"] == system)


def _actions(store: Store, action: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(audit_events).where(audit_events.c.action == action))
                .mappings()]


def _receipts(store: Store, request_id: str) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        values = conn.execute(sa.select(outbox.c.value).where(outbox.c.key == request_id.encode())
                              .order_by(outbox.c.id)).scalars().all()
    return [json.loads(v) for v in values]


def _held(store: Store, request_id: str) -> bool:
    with store.engine.connect() as conn:
        return any(conn.execute(sa.select(tasks.c.held).where(tasks.c.request_id == request_id)).scalars())


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_removed_system_s_task_fails_not_configured_after_the_grace_and_the_subject_moves_on(db_url: str) -> None:
    clock = Clock()
    store = _store(db_url)
    # Recorded as intake does, while beta was configured: the second one held behind the first.
    commands = [_new(clock), _new(clock)]
    assert store.record_commands(commands, clock.now) == [Recorded.NEW] * 2
    first, second = (item.command.request_id for item in commands)
    assert _held(store, second)
    executor = _alpha_only(store, clock)

    _turn(executor)
    assert _task(store, first, "alpha")["state"] == "confirmed"
    clock.advance(GRACE - timedelta(seconds=5))  # within the grace: a new pod of a rollout may still take it
    _turn(executor)
    assert _task(store, first, "beta")["state"] == "pending"
    assert store.get(first)[0]["status"] == "in_progress"
    assert _actions(store, "unconfigured") == []
    receipts_before = len(_receipts(store, first))

    clock.advance(timedelta(seconds=10))
    _turn(executor)
    beta = _task(store, first, "beta")
    assert (beta["state"], beta["error_code"], beta["attempts"]) == ("failed", "not_configured", 0)
    assert "beta" in beta["error_message"]
    assert store.get(first)[0]["status"] == "action_required"
    [event] = _actions(store, "unconfigured")
    assert (event["request_id"], event["system"], event["from_state"], event["to_state"], event["error_code"],
            event["actor"]) == (first, "beta", "pending", "failed", "not_configured", "worker-old")
    receipts = _receipts(store, first)
    assert len(receipts) == receipts_before + 1
    receipt = receipts[-1]
    assert messages.schema_errors("receipt.v1", receipt) == []
    assert receipt["status"] == "action_required"
    assert [s["error"]["code"] for s in receipt["systems"] if s["system"] == "beta"] == ["not_configured"]
    assert EMAIL not in json.dumps(receipt) and "C-dropped" not in json.dumps(receipt)
    assert EMAIL not in event["detail"]
    # Per-subject order holds: the next request waits until a person ends this one, and is not failed meanwhile.
    assert _held(store, second) and _task(store, second, "beta")["state"] == "pending"

    store.operator_confirm(first, "beta", actor="dpo", note="vendor dropped, deleted per ticket 12", now=clock.now)
    assert store.get(first)[0]["status"] == "completed"
    assert not _held(store, second)
    _turn(executor)  # its turn came long after its beta task was due: alpha runs, beta fails at once
    assert _task(store, second, "alpha")["state"] == "confirmed"
    assert _task(store, second, "beta")["error_code"] == "not_configured"
    assert store.get(second)[0]["status"] == "action_required"
    assert len(_actions(store, "unconfigured")) == 2


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_task_running_under_a_live_lease_is_never_failed_but_a_dead_worker_s_is(db_url: str) -> None:
    """A new pod of a rollout that adds beta runs it while an old pod without beta sweeps."""
    now = utcnow()
    old, new = _store(db_url, "worker-old"), _store(db_url, "worker-new")
    request_id = record(old, {"alpha": 3, "beta": 3}, now=now, customer_id="C-rollout")
    [claimed] = new.claim_due(now=now + GRACE * 2, lease_until=now + GRACE * 4, limits={"beta": 1}, room=1)
    assert old.fail_unconfigured({"alpha"}, now=now + GRACE * 3, grace=GRACE) == []
    assert _task(old, request_id, "beta")["state"] == "running"
    assert _actions(old, "unconfigured") == []

    # Its worker died, and nothing has run beta since its lease ran out a grace ago: failed, through lease_expired.
    assert old.fail_unconfigured({"alpha"}, now=now + GRACE * 5, grace=GRACE) == [(request_id, "beta")]
    beta = _task(old, request_id, "beta")
    assert (beta["state"], beta["error_code"], beta["lease_owner"]) == ("failed", "not_configured", None)
    assert [e["to_state"] for e in _actions(old, "lease_expired")] == ["retrying"]
    assert len(_actions(old, "unconfigured")) == 1
    assert old.get(request_id)[0]["status"] == "action_required"
    assert new.finish(claimed, states.Confirm("erased"), TaskUpdate(), now + GRACE * 5) is None  # the lease is lost


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_configured_systems_and_oubli_s_own_steps_are_never_failed(db_url: str) -> None:
    now = utcnow()
    store = _store(db_url)
    request_id = record(store, {"alpha": 3, "_verify": 1}, now=now, customer_id="C-own-steps")
    assert store.fail_unconfigured({"alpha"}, now=now + GRACE * 10, grace=GRACE) == []
    assert {t["system"]: t["state"] for t in store.get(request_id)[1]} == {"alpha": "pending", "_verify": "pending"}
    assert _actions(store, "unconfigured") == []
