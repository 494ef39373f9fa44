"""The order of a request's own tasks: a final step waits for every system, a system for ``_identity``. A task that
waits is ``blocked``, out of the claims' walk, until the write that confirms its last sibling releases it, on both
stores, whichever path confirms it (a result, a person); one left behind is released by the sweep; and a claim
walks only tasks that can run, however many final steps wait."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY
from worker import messages, states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.receipts import IDENTITY_TASK, PACKAGE_TASK, VERIFY_TASK
from worker.store import db, order
from worker.store.claims import WAITING_PG
from worker.store.repository import NewCommand, Store, TaskUpdate
from worker.store.schema import tasks
from worker.support import build_command

LIMITS = {"alpha": 100, "beta": 100, VERIFY_TASK: 100, IDENTITY_TASK: 100}


def _store(url: str) -> Store:
    engine = db.create_engine(url)
    db.migrate(engine)
    return Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="worker-0")


def _new(customer: str, targets: dict[str, int], now: datetime) -> NewCommand:
    body = build_command(kind="erasure", customer_id=customer, requested_by="test-suite", requested_at=now)
    command = messages.parse(body, value=b"", signature=None, signing_secret=None,
                             known_systems=frozenset(s for s in targets if not s.startswith("_")))
    return NewCommand(command=command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), customer),
                      digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets=targets)


def _blocked(store: Store, request_id: str) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(tasks.c.system).where(tasks.c.request_id == request_id, tasks.c.blocked))
                   .scalars())


def _claim(store: Store, now: datetime) -> dict[str, object]:
    return {task.system: task for task in store.claim_due(now=now, lease_until=now + timedelta(minutes=5),
                                                          limits=LIMITS, room=100)}


def test_the_rule_a_final_step_waits_for_every_system_and_every_system_for_identity() -> None:
    assert order.waits_for(VERIFY_TASK, "alpha") and order.waits_for(PACKAGE_TASK, IDENTITY_TASK)
    assert not order.waits_for(VERIFY_TASK, PACKAGE_TASK) and not order.waits_for(PACKAGE_TASK, VERIFY_TASK)
    assert order.waits_for("alpha", IDENTITY_TASK) and not order.waits_for("alpha", "beta")
    assert not order.waits_for(IDENTITY_TASK, "alpha") and not order.waits_for("alpha", VERIFY_TASK)
    assert order.at_intake({"alpha", "beta", VERIFY_TASK}) == {VERIFY_TASK}
    assert order.at_intake({IDENTITY_TASK, "alpha", PACKAGE_TASK}) == {"alpha", PACKAGE_TASK}
    assert order.at_intake({"alpha"}) == set() and order.at_intake({VERIFY_TASK}) == set()
    assert order.blocked_systems({IDENTITY_TASK: "confirmed", "alpha": "failed", VERIFY_TASK: "pending"}) \
        == {VERIFY_TASK}


def test_blocked_systems_is_waits_for_over_every_pair() -> None:
    """Exhaustive over the tasks a request can have (two systems, each internal step, or not) and their states."""
    every = ["alpha", "beta", IDENTITY_TASK, VERIFY_TASK, PACKAGE_TASK]
    states_ = [s.value for s in states.SystemState]
    for systems in itertools.chain.from_iterable(itertools.combinations(every, n) for n in range(1, 6)):
        for assigned in itertools.product(states_, repeat=len(systems)):
            state_of = dict(zip(systems, assigned, strict=True))
            expected = {s for s in systems if any(order.waits_for(s, o) for o in systems if state_of[o] != "confirmed")}
            assert order.blocked_systems(state_of) == expected, state_of


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_final_step_is_released_by_the_result_that_confirms_the_last_system(db_url: str) -> None:
    store = _store(db_url)
    now = utcnow()
    batched, single = (_new(f"C-order-{n}", {"alpha": 3, "beta": 3, VERIFY_TASK: 3}, now) for n in range(2))
    store.record_commands([batched], now)  # the batch intake
    store.record_command(single.command, subject_ref=single.subject_ref, digest=single.digest,  # the single one
                         targets=single.targets, now=now)
    for request_id in (batched.command.request_id, single.command.request_id):
        assert _blocked(store, request_id) == {VERIFY_TASK}
    later = now + timedelta(seconds=1)
    claimed = store.claim_due(now=later, lease_until=later + timedelta(minutes=5), limits=LIMITS, room=100)
    assert sorted(t.system for t in claimed) == ["alpha", "alpha", "beta", "beta"]
    mine = [t for t in claimed if t.request_id == batched.command.request_id]
    first, last = sorted(mine, key=lambda t: t.system)
    store.finish_many([(first, states.Confirm("erased"), TaskUpdate())], later)
    assert _blocked(store, batched.command.request_id) == {VERIFY_TASK}  # beta has not confirmed yet
    store.finish_many([(last, states.Confirm("not_found"), TaskUpdate())], later)
    assert _blocked(store, batched.command.request_id) == set()
    assert [t.request_id for t in _claim(store, later).values()] == [batched.command.request_id]


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_systems_wait_for_identity_and_a_person_s_confirmation_releases_a_final_step(db_url: str) -> None:
    store = _store(db_url)
    now = utcnow()
    item = _new("C-order-identity", {IDENTITY_TASK: 3, "alpha": 1, VERIFY_TASK: 3}, now)
    request_id = item.command.request_id
    store.record_commands([item], now)
    assert _blocked(store, request_id) == {"alpha", VERIFY_TASK}
    later = now + timedelta(seconds=1)
    (identity,) = _claim(store, later).values()
    store.finish(identity, states.Confirm("resolved"), TaskUpdate(), later)  # type: ignore[arg-type]
    assert _blocked(store, request_id) == {VERIFY_TASK}
    (alpha,) = _claim(store, later).values()
    store.finish(alpha, states.Fail("refused", "the system refused", retryable=False), TaskUpdate(), later)  # type: ignore[arg-type]
    assert _blocked(store, request_id) == {VERIFY_TASK} and _claim(store, later) == {}
    store.operator_confirm(request_id, "alpha", actor="dpo", note="erased by hand", now=later)
    assert _blocked(store, request_id) == set()
    assert list(_claim(store, later)) == [VERIFY_TASK]


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_the_sweep_releases_exactly_what_the_rule_would(db_url: str) -> None:
    """The sweep's SQL against ``blocked_systems``: every task of every combination left blocked, one sweep."""
    store = _store(db_url)
    now = utcnow()
    shapes = [("alpha", IDENTITY_TASK, VERIFY_TASK), ("alpha", "beta", PACKAGE_TASK), (IDENTITY_TASK, "alpha")]
    items: list[NewCommand] = []
    state_of: dict[tuple[str, str], str] = {}
    expected: dict[tuple[str, str], bool] = {}
    for n, systems in enumerate(shapes):
        for k, assigned in enumerate(itertools.product(["pending", "confirmed", "failed"], repeat=len(systems))):
            item = _new(f"C-sweep-{n}-{k}", dict.fromkeys(systems, 3), now)
            items.append(item)
            blocked = order.blocked_systems(dict(zip(systems, assigned, strict=True)))
            for system, state in zip(systems, assigned, strict=True):
                state_of[(item.command.request_id, system)] = state
                expected[(item.command.request_id, system)] = system in blocked
    store.record_commands(items, now)
    with store.engine.begin() as conn:
        for (request_id, system), state in state_of.items():
            conn.execute(tasks.update().where(tasks.c.request_id == request_id, tasks.c.system == system)
                         .values(state=state, blocked=True))
    assert store.unblock_missed() == sum(not blocked for blocked in expected.values())
    with store.engine.connect() as conn:
        found = {(r.request_id, r.system): bool(r.blocked)
                 for r in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.blocked))}
    assert found == expected


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_task_left_blocked_is_released_by_the_sweep(db_url: str) -> None:
    store = _store(db_url)
    now = utcnow()
    item = _new("C-order-missed", {"alpha": 3, VERIFY_TASK: 3}, now)
    store.record_commands([item], now)
    with store.engine.begin() as conn:  # a write that confirmed alpha without keeping _verify in step
        conn.execute(tasks.update().where(tasks.c.request_id == item.command.request_id, tasks.c.system == "alpha")
                     .values(state="confirmed", outcome="erased"))
    later = now + timedelta(seconds=1)
    assert _claim(store, later) == {}
    assert store.unblock_missed() == 1
    assert store.unblock_missed() == 0
    assert list(_claim(store, later)) == [VERIFY_TASK]


def test_a_claim_walks_no_final_step_whose_systems_are_still_at_work(pg_url: str) -> None:
    """300 erasures whose _verify waits for alpha: the claim walked (and probed) all 300 waiting _verify tasks each
    time, since none could run. Now the walk of ``ix_tasks_claim`` holds alpha's tasks alone, up to its limit."""
    store = _store(pg_url)
    now = utcnow()
    store.record_commands([_new(f"C-burst-{i}", {"alpha": 3, VERIFY_TASK: 3}, now) for i in range(300)], now)
    with store.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
        plan = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + WAITING_PG.text),
                            {"now": now + timedelta(seconds=1), "systems": ["alpha", VERIFY_TASK],
                             "limits": [100, 100], "total": 1000}).scalar_one()
    document = plan if isinstance(plan, list) else json.loads(plan)
    walked: list[int] = []

    def visit(node: dict[str, object]) -> None:
        if node.get("Index Name") == "ix_tasks_claim":  # what the scan read: what it kept, and what its gates threw
            read = int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))  # type: ignore[call-overload]
            walked.append(read * int(node["Actual Loops"]))  # type: ignore[call-overload]
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            visit(child)

    visit(document[0]["Plan"])
    assert walked, "the claim no longer walks ix_tasks_claim"
    assert sum(walked) == 100  # alpha's first 100; not one _verify task
