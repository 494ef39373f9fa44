"""Claims against the real PostgreSQL: a system's concurrency limit holds across workers, even
when they claim at the same instant, and a claimed task is never handed out twice."""

from __future__ import annotations

import threading
from datetime import timedelta

from devkit.pipeline import record
from worker import states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store.repository import Store, TaskUpdate


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
