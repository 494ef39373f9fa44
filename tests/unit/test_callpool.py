"""The connector call pool (worker.callpool), and what the executor makes of a connector that raises."""

from __future__ import annotations

import dataclasses
import errno
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from devkit import fakes
from devkit.pipeline import subject_command
from tests.unit.test_loop import World
from worker.callpool import CallPool
from worker.core.errors import NeedsPersonError, PermanentError, RetryableError
from worker.messages import schema_errors
from worker.store.schema import audit_events, tasks


def _until(done: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.001)


def test_calls_run_on_threads_started_up_front_and_are_taken_in_the_order_they_ended() -> None:
    gates = {name: threading.Event() for name in "abc"}
    pool: CallPool[str, str] = CallPool(3, lambda name: (gates[name].wait(5), name.upper())[1], name="t")
    assert len(pool.threads) == 3 and all(t.is_alive() and t.daemon for t in pool.threads)
    for name in "abc":
        pool.submit(name)
    assert pool.running() == 3 and pool.take(10) == []
    gates["b"].set()
    assert pool.wait(5.0)
    _until(lambda: pool.running() == 2)
    gates["c"].set()
    gates["a"].set()
    _until(lambda: pool.running() == 0)
    taken = pool.take(2)
    assert taken[0] == ("b", "B") and len(taken) == 2  # b ended first
    assert len(pool.take(10)) == 1 and pool.take(10) == []
    pool.shutdown()


class Call:
    """A call that can be watched for being freed (a real one carries a subject's personal data)."""


def test_an_idle_thread_keeps_no_reference_to_its_last_call() -> None:
    pool: CallPool[Call, str] = CallPool(2, lambda call: "done", name="t")
    calls = [Call(), Call()]
    watched = [weakref.ref(call) for call in calls]
    for call in calls:
        pool.submit(call)
    del call
    _until(lambda: pool.running() == 0)
    assert [outcome for _, outcome in pool.take(10)] == ["done", "done"]
    calls.clear()
    gc.collect()
    assert [ref() for ref in watched] == [None, None]
    pool.shutdown()


def test_wait_returns_false_when_no_call_ends() -> None:
    pool: CallPool[int, int] = CallPool(1, lambda n: n, name="t")
    started = time.monotonic()
    assert pool.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    pool.shutdown()


def test_wait_for_several_calls_returns_once_that_many_wait_to_be_taken() -> None:
    gates = {name: threading.Event() for name in "abcd"}
    pool: CallPool[str, str] = CallPool(4, lambda name: (gates[name].wait(5), name)[1], name="t")
    for name in "abcd":
        pool.submit(name)
    assert pool.outstanding() == 4
    gates["a"].set()
    assert pool.wait(5.0)  # one is the default
    assert pool.wait(0.05, count=2) is False  # b, c and d still run
    threading.Timer(0.1, gates["b"].set).start()
    started = time.monotonic()
    assert pool.wait(5.0, count=2)
    assert 0.05 <= time.monotonic() - started < 4.0  # woken by b's end, not by a's earlier one, nor the timeout
    assert [name for name, _ in pool.take(10)] == ["a", "b"] and pool.outstanding() == 2
    gates["c"].set()
    gates["d"].set()
    pool.shutdown()


def test_ended_calls_left_untaken_do_not_end_every_wait_at_once() -> None:
    """The loop cannot take results while the store is out: its next waits still last, so it does not spin."""
    pool: CallPool[int, int] = CallPool(1, lambda n: n, name="t")
    pool.submit(1)
    assert pool.wait(5.0)
    started = time.monotonic()
    assert pool.wait(0.05) is False and pool.wait(0.05) is False
    assert time.monotonic() - started >= 0.09
    assert pool.take(10) == [(1, 1)]
    pool.shutdown()


def test_the_executor_waits_for_a_share_of_its_calls_and_for_a_lone_one(tmp_path: Path) -> None:
    """A busy loop's turn records a share of the calls in flight at once, not one or two each turn; a lone call's
    result is recorded as soon as it returns."""
    from worker.executor import GATHER_SHARE

    executor = World(tmp_path).loop.executor
    gates = {index: threading.Event() for index in range(2 * GATHER_SHARE + 1)}
    executor.pool._run = lambda index: gates[index].wait(5)  # type: ignore[method-assign,assignment]
    for index in range(2 * GATHER_SHARE):
        executor.pool.submit(index)  # type: ignore[arg-type]
    gates[0].set()
    assert executor.wait_for_calls(0.1) is False  # one of eight returned: two are waited for
    gates[1].set()
    assert executor.wait_for_calls(5.0)
    for index in range(2, 2 * GATHER_SHARE):
        gates[index].set()
    _until(lambda: executor.pool.running() == 0)
    assert len(executor.pool.take(100)) == 2 * GATHER_SHARE
    lone = 2 * GATHER_SHARE
    executor.pool.submit(lone)  # type: ignore[arg-type]
    threading.Timer(0.05, gates[lone].set).start()
    assert executor.wait_for_calls(5.0)  # its own end is enough


def test_shutdown_drops_the_queued_calls_and_lets_the_running_one_end() -> None:
    release, running = threading.Event(), threading.Event()
    ran: list[int] = []

    def run(n: int) -> int:
        running.set()
        release.wait(5)
        ran.append(n)
        return n

    pool: CallPool[int, int] = CallPool(1, run, name="t")
    for n in range(5):
        pool.submit(n)
    assert running.wait(5)  # the first call is on the thread
    pool.shutdown()
    release.set()
    pool.threads[0].join(5)
    assert ran == [0] and not pool.threads[0].is_alive()


def _raising_world(tmp_path: Path, failure: BaseException) -> tuple[World, dict[str, Any], Any]:
    """A started world whose alpha connector raises ``failure`` on erase, a command sent to alpha alone, and a way
    to put the connector back. A backoff longer than a few loop turns: the retry must not be claimed before the
    test reads the row."""
    world = World(tmp_path)
    world.loop.store.policy = dataclasses.replace(world.loop.store.policy, base_seconds=2.0, max_seconds=2.0)
    world.loop.start()
    connector = world.loop.executor.connectors["alpha"]
    real = connector.erase
    connector.erase = lambda subject: (_ for _ in ()).throw(failure)  # type: ignore[method-assign]
    command = subject_command(systems=["alpha"])

    def heal() -> None:
        connector.erase = real  # type: ignore[method-assign]

    return world, command, heal


def _alpha_task(world: World, request_id: str) -> dict[str, Any]:
    with world.loop.engine.connect() as conn:
        row = conn.execute(sa.select(tasks).where(tasks.c.request_id == request_id,
                                                  tasks.c.system == "alpha")).mappings().first()
    return dict(row) if row else {}


@pytest.mark.parametrize("failure", [ValueError, SystemExit])
def test_a_connector_that_raises_fails_its_task_without_its_message_and_the_worker_goes_on(
        tmp_path: Path, failure: type[BaseException]) -> None:
    """Even ``sys.exit`` in a connector is a retryable ``unexpected_error``: its message may quote personal
    data, so only the exception's type is kept, and the pool's thread lives on."""
    world, command, heal = _raising_world(tmp_path, failure("no row for marie.dupont@example.fr"))
    world.send(command, partition=0)
    world.until(lambda: _alpha_task(world, command["request_id"]).get("error_code") == "unexpected_error")
    row = _alpha_task(world, command["request_id"])
    assert row["state"] == "retrying"
    assert row["error_message"] == f"alpha raised {failure.__name__}"
    assert all(t.is_alive() for t in world.loop.executor.pool.threads)
    heal()
    world.until(lambda: any(r["status"] == "completed" for r in world.receipts()), limit=20)
    world.loop.close()


def test_a_full_disk_is_a_retryable_disk_full_not_a_connector_bug(tmp_path: Path) -> None:
    """An export's staging files fill the worker's disk: the operator's to fix, said as such (an error code and a
    log event of its own), and the call succeeds once there is room."""
    full = OSError(errno.ENOSPC, "No space left on device", "/var/oubli/staging/marie.dupont@example.fr.json")
    world, command, heal = _raising_world(tmp_path, full)
    with structlog.testing.capture_logs() as logs:
        world.send(command, partition=0)
        world.until(lambda: _alpha_task(world, command["request_id"]).get("error_code") == "disk_full")
    row = _alpha_task(world, command["request_id"])
    assert row["state"] == "retrying"
    assert row["error_message"] == "alpha: no space left on the worker's disk (ENOSPC)"  # no path: it may be personal
    events = [entry["event"] for entry in logs]
    assert "disk_full" in events and "connector_bug" not in events
    assert "marie.dupont" not in repr(logs)
    heal()
    world.until(lambda: any(r["status"] == "completed" for r in world.receipts()), limit=20)
    world.loop.close()


def test_a_call_past_its_deadline_is_abandoned_a_spare_takes_its_thread_and_its_late_outcome_is_dropped() -> None:
    release = threading.Event()
    pool: CallPool[str, str] = CallPool(1, lambda name: (release.wait(5) if name == "hung" else None, name)[1],
                                        name="t", spare=1)
    pool.submit("hung")
    _until(lambda: pool.running() == 1 and pool.abandon_overdue(3600) == [])
    time.sleep(0.02)
    (abandoned,) = pool.abandon_overdue(0.01)
    assert abandoned[0] == "hung" and abandoned[1] >= 0.01
    assert pool.abandon_overdue(0.01) == []  # given up on once
    assert pool.running() == 0 and pool.abandoned() == 1 and pool.lost == 0
    pool.submit("next")  # served by the spare while the hung call holds its thread
    _until(lambda: pool.running() == 0 and len(pool._ended) == 1)
    assert pool.take(10) == [("next", "next")]
    release.set()
    _until(lambda: pool.abandoned() == 0)
    assert pool.take(10) == [] and pool.running() == 0
    _until(lambda: sum(t.is_alive() for t in pool.threads) == 1)  # the replaced thread ended with its call
    pool.shutdown()


def test_a_heavier_call_gets_as_many_deadlines_as_its_weight() -> None:
    """A job of three checks (weight 3) runs past one deadline without being abandoned, not past three."""
    clock = [0.0]
    release = threading.Event()
    pool: CallPool[tuple[str, ...], int] = CallPool(2, lambda job: (release.wait(5), len(job))[1], name="t",
                                                    monotonic=lambda: clock[0], weight=len)
    pool.submit(("a", "b", "c"))
    pool.submit(("d",))
    _until(lambda: len(pool._running) == 2)
    clock[0] = 1.5
    assert [call for call, _ in pool.abandon_overdue(1.0)] == [("d",)]
    clock[0] = 2.9
    assert pool.abandon_overdue(1.0) == []
    clock[0] = 3.0
    assert [call for call, _ in pool.abandon_overdue(1.0)] == [("a", "b", "c")]
    release.set()
    _until(lambda: pool.abandoned() == 0)
    pool.shutdown()


def test_past_its_spares_an_abandoned_call_holds_its_slot_as_lost_until_it_returns() -> None:
    release = threading.Event()
    pool: CallPool[str, str] = CallPool(1, lambda name: (release.wait(5), name)[1], name="t", spare=0)
    pool.submit("hung")
    _until(lambda: len(pool._running) == 1)
    time.sleep(0.02)
    assert [call for call, _ in pool.abandon_overdue(0.01)] == ["hung"]
    assert pool.lost == 1 and len(pool.threads) == 1
    release.set()
    _until(lambda: pool.lost == 0 and pool.abandoned() == 0)
    pool.submit("again")  # the same thread serves again
    _until(lambda: len(pool._ended) == 1)
    assert pool.take(10) == [("again", "again")]
    pool.shutdown()


def test_a_hung_call_times_out_retries_later_and_other_systems_go_on_meanwhile(tmp_path: Path) -> None:
    """One slot in all (max_in_flight 1), held by a call that never answers: past call_timeout_seconds its
    attempt is a retryable call_timeout, another system's request completes, the retry completes its own, and
    the hung call's late answer is recorded nowhere."""
    world = World(tmp_path, systems=("alpha", "beta"), worker={"max_in_flight": 1, "call_timeout_seconds": 1})
    executor = world.loop.executor
    # Below the setting's floor of 1 s, to keep the test fast; not much below, or a retry that is only slow (CI runs
    # the fast tests on Python 3.13 beside the full suite, on 2 cores) is abandoned as well.
    executor.call_timeout, executor.deadline_every = 0.6, 0.1
    world.loop.start()
    connector = executor.connectors["alpha"]
    real, release, calls = connector.erase, threading.Event(), []

    def hang_first(subject: Any) -> Any:
        calls.append(subject.request_id)
        if len(calls) == 1:
            release.wait(10)
        return real(subject)

    connector.erase = hang_first  # type: ignore[method-assign]
    hung, healthy = subject_command(systems=["alpha"]), subject_command(systems=["beta"])
    world.send(hung, partition=0)
    world.until(lambda: len(calls) == 1)
    world.send(healthy, partition=1)

    def status(command: dict[str, Any]) -> str | None:
        found = [r["status"] for r in world.receipts() if r["request_id"] == command["request_id"]]
        return found[-1] if found else None

    world.until(lambda: status(healthy) == "completed" and status(hung) == "completed", limit=5)
    assert not release.is_set() and executor.pool.abandoned() == 1 and world.loop._ready()
    with world.loop.engine.connect() as conn:
        trail = conn.execute(sa.select(audit_events.c.action, audit_events.c.error_code).where(
            audit_events.c.request_id == hung["request_id"], audit_events.c.system == "alpha")
            .order_by(audit_events.c.id)).all()
    assert [tuple(t) for t in trail if t.action != "claimed"][-2:] == [("fail", "call_timeout"), ("confirm", None)]
    retrying = [r for r in world.receipts() if r["request_id"] == hung["request_id"] and r["status"] == "in_progress"]
    assert any(s["state"] == "retrying" for r in retrying for s in r["systems"])
    receipts = len(world.receipts())

    release.set()  # the vendor answers at last: the effect is repeated (idempotent), the result dropped
    world.until(lambda: executor.pool.abandoned() == 0)
    world.turn(5)
    assert fakes.effect_count(world.effects_url, hung["request_id"], "erase", "alpha") == 2
    with world.loop.engine.connect() as conn:
        confirms = conn.execute(sa.select(sa.func.count()).select_from(audit_events).where(
            audit_events.c.request_id == hung["request_id"], audit_events.c.action == "confirm",
            audit_events.c.system == "alpha")).scalar_one()
    assert confirms == 1 and len(world.receipts()) == receipts
    world.loop.close()


@pytest.mark.parametrize(("raised", "stored"), [
    (PermanentError("refused", code="Vendor-Error 42"), "vendor_error_42"),
    (RetryableError("later", code="E" * 100), "e" * 64),
    (NeedsPersonError("ask", code="409"), "connector_409"),
])
def test_a_connectors_error_code_is_kept_in_the_shape_the_receipt_and_the_store_hold(
        tmp_path: Path, raised: Exception, stored: str) -> None:
    """A plug-in connector's code is its author's text. Kept as it came, one breaking receipt.v1's pattern
    published a receipt that broke its schema, and one over 64 characters made PostgreSQL refuse every result of
    the batch, again on every turn."""
    world, command, heal = _raising_world(tmp_path, raised)
    world.send(command, partition=0)
    world.until(lambda: _alpha_task(world, command["request_id"]).get("error_code") is not None)
    assert _alpha_task(world, command["request_id"])["error_code"] == stored
    if isinstance(raised, RetryableError):
        heal()
        world.until(lambda: any(r["status"] == "completed" for r in world.receipts()), limit=20)
    else:
        world.until(lambda: any(r["status"] == "action_required" for r in world.receipts()))
        receipt = next(r for r in world.receipts() if r["status"] == "action_required")
        assert schema_errors("receipt.v1", receipt) == []
        assert receipt["systems"][0]["error"]["code"] == stored
    world.loop.close()
