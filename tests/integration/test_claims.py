"""Claims against the real PostgreSQL: a system's concurrency limit holds across workers, even
when they claim at the same instant, and a claimed task is never handed out twice."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from devkit.pipeline import SUBJECT_KEY, record
from worker import messages, states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store.claims import WAITING_PG
from worker.store.repository import NewCommand, Recorded, Store, TaskUpdate
from worker.support import build_command


def _stores(url: str, count: int) -> list[Store]:
    engine = db.create_engine(url)
    db.migrate(engine)
    return [Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor=f"worker-{i}") for i in range(count)]


def _record(store: Store, requests: int) -> None:
    now = utcnow()
    for i in range(requests):
        record(store, {"slow": 3, "fast": 3}, now=now, customer_id=f"C-claim-{i}")


def test_the_limit_counts_tasks_running_on_other_workers(pg_url: str) -> None:
    first, second = _stores(pg_url, 2)
    _record(first, 3)
    now = utcnow()
    lease = now + timedelta(minutes=5)
    mine = first.claim_due(now=now, lease_until=lease, limits={"slow": 1}, room=10)
    assert [t.system for t in mine] == ["slow"]
    assert second.claim_due(now=now, lease_until=lease, limits={"slow": 1}, room=10) == []
    assert len(second.claim_due(now=now, lease_until=lease, limits={"slow": 1, "fast": 5}, room=10)) == 3
    assert first.finish(mine[0], states.Confirm("erased"), TaskUpdate(), now) is not None
    again = second.claim_due(now=now, lease_until=lease, limits={"slow": 1}, room=10)
    assert [t.system for t in again] == ["slow"]


def test_simultaneous_claims_never_exceed_the_limit_or_share_a_task(pg_url: str) -> None:
    stores = _stores(pg_url, 6)
    _record(stores[0], 12)
    now = utcnow()
    barrier = threading.Barrier(len(stores))
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claim(store: Store) -> None:
        barrier.wait()
        got = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"slow": 2}, room=5)
        with lock:
            claimed.extend((t.request_id, t.system) for t in got)

    threads = [threading.Thread(target=claim, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(claimed) == 2
    assert len(set(claimed)) == len(claimed)


def test_a_task_whose_request_another_transaction_holds_is_passed_over_without_using_up_a_share(pg_url: str) -> None:
    """The claim locks as it finds (FOR UPDATE ... SKIP LOCKED inside each system's range): a request a result is
    being recorded for is skipped, not waited for, and the next waiting task takes its place in the same claim."""
    (store,) = _stores(pg_url, 1)
    _record(store, 3)
    first = store.engine.connect().execution_options(isolation_level="READ COMMITTED")
    with first, first.begin():
        oldest = first.execute(sa.text("SELECT request_id FROM requests ORDER BY seq LIMIT 1")).scalar_one()
        first.execute(sa.text("SELECT 1 FROM requests WHERE request_id = :r FOR UPDATE"), {"r": oldest})
        now = utcnow()
        got = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"slow": 2}, room=10)
    assert len(got) == 2 and oldest not in {t.request_id for t in got}
    later = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"slow": 3}, room=10)
    assert [t.request_id for t in later] == [oldest]  # free again once that transaction ended


def test_the_relay_lease_has_one_holder_until_it_expires(pg_url: str) -> None:
    first, second = _stores(pg_url, 2)
    now = utcnow()
    ttl = timedelta(seconds=15)
    assert first.outbox.acquire_lease("outbox-relay", now=now, ttl=ttl)
    assert not second.outbox.acquire_lease("outbox-relay", now=now, ttl=ttl)
    assert first.outbox.acquire_lease("outbox-relay", now=now + timedelta(seconds=10), ttl=ttl)  # renewal
    assert not second.outbox.acquire_lease("outbox-relay", now=now + timedelta(seconds=20), ttl=ttl)
    assert second.outbox.acquire_lease("outbox-relay", now=now + timedelta(seconds=26), ttl=ttl)  # the holder vanished
    assert not first.outbox.acquire_lease("outbox-relay", now=now + timedelta(seconds=27), ttl=ttl)


def _new(store: Store, customer: str, now: datetime, *, priority: str = "standard",
         due_at: datetime | None = None) -> NewCommand:
    body = {**build_command(kind="erasure", customer_id=customer, requested_by="test-suite", requested_at=now,
                            due_at=due_at), "priority": priority}
    command = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset({"slow"}))
    return NewCommand(command=command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), customer),
                      digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets={"slow": 3})


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_claim_order_expired_leases_then_standard_then_earliest_deadline_then_intake(db_url: str) -> None:
    [store] = _stores(db_url, 1)
    now = utcnow()
    day = timedelta(days=1)
    dying = _new(store, "C-dying", now, due_at=now + 30 * day)
    assert store.record_commands([dying], now) == [Recorded.NEW]
    # Its worker dies mid-call: the lease expires.
    [task] = store.claim_due(now=now, lease_until=now + timedelta(seconds=1), limits={"slow": 1}, room=1)
    assert task.request_id == dying.command.request_id
    assert store.claim_due(now=now, lease_until=now, limits={"slow": 1}, room=1) == []  # the limit holds
    batch = [_new(store, "C-bg-early", now, priority="background", due_at=now + day),
             _new(store, "C-late", now, due_at=now + 9 * day),
             _new(store, "C-first-seq", now, due_at=now + 5 * day),
             _new(store, "C-second-seq", now, due_at=now + 5 * day),
             _new(store, "C-soonest", now, due_at=now + 2 * day)]
    assert store.record_commands(batch, now) == [Recorded.NEW] * len(batch)
    name = {item.command.request_id: item.command.customer_id for item in [dying, *batch]}
    later = now + timedelta(seconds=5)
    order = []
    for _ in range(len(batch) + 1):  # the limit is 1: one claim at a time, each finished before the next
        [task] = store.claim_due(now=later, lease_until=later + timedelta(minutes=5), limits={"slow": 1}, room=5)
        order.append(name[task.request_id])
        assert store.finish(task, states.Confirm("erased"), TaskUpdate(), later) is not None
    assert order == ["C-dying", "C-soonest", "C-first-seq", "C-second-seq", "C-late", "C-bg-early"]


@pytest.mark.parametrize("db_url", ["sqlite", "pg"], indirect=True)
def test_a_batch_records_new_duplicate_and_conflicting_commands_in_one_transaction(db_url: str) -> None:
    [store] = _stores(db_url, 1)
    now = utcnow()
    first = _new(store, "C-one", now)
    assert store.record_commands([first], now) == [Recorded.NEW]
    changed = _new(store, "C-two", now)
    conflicting = NewCommand(command=dataclasses.replace(changed.command, request_id=first.command.request_id),
                             subject_ref=changed.subject_ref, digest=changed.digest, targets=changed.targets)
    fresh = [_new(store, f"C-new-{i}", now) for i in range(3)]
    assert store.record_commands([fresh[0], first, fresh[1], fresh[2]], now) == \
        [Recorded.NEW, Recorded.DUPLICATE, Recorded.NEW, Recorded.NEW]
    assert store.record_commands([conflicting], now) == [Recorded.CONFLICT]
    seqs = [store.get(item.command.request_id)[0]["seq"] for item in fresh]
    assert seqs == sorted(seqs)  # intake order: it orders a subject's requests
    for item in [first, *fresh]:
        request, task_rows, events = store.get(item.command.request_id)
        assert request["status"] == "accepted" and [t["system"] for t in task_rows] == ["slow"]
        assert events[0]["action"] == "accepted"
    assert [e["action"] for e in store.get(first.command.request_id)[2]] == ["accepted", "duplicate_received"]
    receipts = [r for r in store.outbox.batch(100)]
    assert len(receipts) == 5  # four accepted receipts and the duplicate's: never one for the conflict


def test_the_waiting_scan_probes_siblings_by_key_and_never_compiles(pg_url: str) -> None:
    """The claim's waiting-task statement on PostgreSQL answers its sibling gates (an unconfirmed identity
    lookup, unfinished real systems before a final task) with a lookup per candidate, never a hashed subplan
    that reads every task of the store on each claim; and the store's sessions never JIT-compile a plan."""
    (store,) = _stores(pg_url, 1)
    _record(store, 40)
    systems = ["_identity", "_verify", "fast", "slow"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW jit")).scalar_one() == "off"
        # Costs as if the store were huge, where the planner preferred hashing: the plan must not change.
        conn.execute(sa.text("SET LOCAL cpu_operator_cost = 10"))
        plan = "\n".join(conn.execute(sa.text("EXPLAIN " + WAITING_PG.text),
                                      {"now": utcnow(), "systems": systems, "limits": [1000] * len(systems),
                                       "total": 4000})
                         .scalars())
    assert "SubPlan" in plan
    assert "hashed" not in plan.lower()
