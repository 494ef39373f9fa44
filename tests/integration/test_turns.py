"""A subject's turns: a request recorded behind an open request of its subject is held out of the claims'
walk until that one ends, on both stores; a turn missed in a race is released by the sweep; and a claim
walks only tasks that can run, however many of one subject's requests wait."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY
from worker import messages, states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store.claims import WAITING_PG
from worker.store.repository import NewCommand, Recorded, Store, TaskUpdate
from worker.store.schema import tasks
from worker.support import build_command

SYSTEMS = {"alpha": 3, "beta": 3}
LIMITS = {"alpha": 100, "beta": 100}


def _store(url: str) -> Store:
    engine = db.create_engine(url)
    db.migrate(engine)
    return Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="worker-0")


def _new(customer: str, now: datetime) -> NewCommand:
    body = build_command(kind="erasure", customer_id=customer, requested_by="test-suite", requested_at=now)
    command = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset(SYSTEMS))
    return NewCommand(command=command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), customer),
                      digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets=SYSTEMS)


def _held(store: Store) -> dict[str, bool]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.request_id, tasks.c.held)).all()
    held: dict[str, bool] = {}
    for request_id, flag in rows:
        held[request_id] = held.get(request_id, False) or bool(flag)
    return held


def _claim(store: Store, now: datetime) -> list[str]:
    claimed = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits=LIMITS, room=100)
    for task in claimed:
        assert store.finish(task, states.Confirm("erased"), TaskUpdate(), now) is not None
    return sorted({task.request_id for task in claimed})


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_subject_s_later_requests_wait_held_until_the_one_ahead_ends(db_url: str) -> None:
    store = _store(db_url)
    now = utcnow()
    first, second = _new("C-turns", now), _new("C-turns", now)
    other = _new("C-other", now)
    # Held behind a request of the same batch, and behind one already in the store.
    assert store.record_commands([first, other, second], now) == [Recorded.NEW] * 3
    third = _new("C-turns", now)
    assert store.record_commands([third], now) == [Recorded.NEW]
    ids = [item.command.request_id for item in (first, second, third, other)]
    assert _held(store) == dict(zip(ids, [False, True, True, False], strict=True))

    later = now + timedelta(seconds=1)
    assert _claim(store, later) == sorted([ids[0], ids[3]])  # both systems of each, confirmed: both complete
    assert store.get(ids[0])[0]["status"] == "completed"
    assert _held(store) == dict(zip(ids, [False, False, True, False], strict=True))  # the next one's turn
    assert _claim(store, later) == [ids[1]]
    assert _held(store)[ids[2]] is False
    assert _claim(store, later) == [ids[2]]


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_an_operator_s_confirmation_that_ends_a_request_gives_the_next_its_turn(db_url: str) -> None:
    store = _store(db_url)
    now = utcnow()
    first, second = _new("C-person", now), _new("C-person", now)
    store.record_commands([first, second], now)
    for system in SYSTEMS:
        store.operator_confirm(first.command.request_id, system, actor="dpo", note="done by hand", now=now)
    assert store.get(first.command.request_id)[0]["status"] == "completed"
    assert _held(store)[second.command.request_id] is False
    assert _claim(store, now + timedelta(seconds=1)) == [second.command.request_id]


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_turn_missed_in_a_race_is_released_by_the_sweep(db_url: str) -> None:
    """Two workers: one records a request held behind an open one while the other ends that one in a
    transaction that cannot see the new request. Here the race's outcome is written directly."""
    store = _store(db_url)
    now = utcnow()
    ahead, behind, after = _new("C-race", now), _new("C-race", now), _new("C-race", now)
    store.record_commands([ahead, behind, after], now)
    with store.engine.begin() as conn:  # the one ahead ended without releasing anyone
        conn.execute(sa.text("UPDATE requests SET status = 'completed' WHERE request_id = :r"),
                     {"r": ahead.command.request_id})
        conn.execute(tasks.update().where(tasks.c.request_id == ahead.command.request_id).values(state="confirmed"))
    later = now + timedelta(seconds=1)
    assert store.claim_due(now=later, lease_until=later + timedelta(minutes=5), limits=LIMITS, room=100) == []
    assert store.release_missed_turns() == len(SYSTEMS)  # the next request's tasks, and only those
    assert _held(store)[after.command.request_id] is True
    assert _claim(store, later) == [behind.command.request_id]
    assert store.release_missed_turns() == 0  # 'after' was released by behind's end, not by the sweep
    assert _held(store)[after.command.request_id] is False


def test_a_claim_walks_only_tasks_that_can_run_however_long_a_subject_s_queue(pg_url: str) -> None:
    """One subject with 300 open requests: the old claim walked (and probed) all 600 of their tasks on every
    claim. The index scan of ``ix_tasks_claim`` must now return only the head request's tasks and the others'."""
    store = _store(pg_url)
    now = utcnow()
    queue = [_new("C-retrying-sender", now) for _ in range(300)]
    others = [_new(f"C-someone-{i}", now) for i in range(5)]
    store.record_commands(queue[:150] + others, now)
    store.record_commands(queue[150:], now)
    with store.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
        plan = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + WAITING_PG.text),
                            {"now": now + timedelta(seconds=1), "systems": sorted(SYSTEMS),
                             "limits": [100] * len(SYSTEMS), "total": 1000}).scalar_one()
    document = plan if isinstance(plan, list) else json.loads(plan)
    walked: list[int] = []

    def visit(node: dict[str, object]) -> None:
        if node.get("Index Name") == "ix_tasks_claim":
            walked.append(int(node["Actual Rows"]) * int(node["Actual Loops"]))  # type: ignore[call-overload]
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            visit(child)

    visit(document[0]["Plan"])
    assert walked, "the claim no longer walks ix_tasks_claim"
    assert sum(walked) == 2 * (1 + len(others))  # per system: the queue's head and the five others
