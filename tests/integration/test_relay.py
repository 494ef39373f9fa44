"""Receipts never go backwards, and no single record wedges the outbox relay.

- A duplicate command recorded while another transaction completes its request waits for the request
  lock, so its fresh copy of the receipt is the completed one (two PostgreSQL connections).
- A relay that stalls after reading a batch and resumes after a newer leader published cannot add its
  stale receipts to the topic: the newer leader's ``init_transactions`` fenced it (real Kafka).
- A DLQ record the broker refuses as too large is replaced by a reference and the receipts behind it
  go out (a private broker whose ``message.max.bytes`` is small).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from devkit import services
from devkit.pipeline import SUBJECT_KEY, raw_settings, read_topic, record, settings_from
from tests.private_kafka import PrivateKafka
from worker import messages, states
from worker.config import Settings, Topics
from worker.core.timefmt import utcnow
from worker.outbox import Relay, producer_config
from worker.store import db
from worker.store.outbox import Held, OutboxRecord, _held_delete_statement
from worker.store.repository import Recorded, Store, TaskUpdate
from worker.store.schema import outbox
from worker.support import build_command

TOPICS = Topics(commands="relay.commands", receipts="relay.receipts", dlq="relay.dlq")


def _statuses(engine: sa.Engine, request_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.value).where(outbox.c.topic == TOPICS.receipts,
                                                            outbox.c.key == request_id.encode())
                            .order_by(outbox.c.id)).all()
    return [json.loads(row.value)["status"] for row in rows]


def test_a_duplicate_recorded_while_its_request_completes_queues_the_completed_receipt_last(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    completing, duplicate = (Store(engine, topics=TOPICS, policy=states.RetryPolicy(), actor=f"w{i}") for i in (1, 2))
    now = utcnow()
    body = build_command(kind="erasure", customer_id="C-race-1", requested_by="test-suite", requested_at=now)
    command = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset({"alpha"}))

    def record_command(store: Store) -> Recorded:
        return store.record_command(command, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), "C-race-1"),
                                    digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets={"alpha": 3},
                                    now=now)

    assert record_command(completing) == Recorded.NEW
    request_id = command.request_id
    [claimed] = completing.claim_due(now=now, lease_until=now + timedelta(minutes=1), limits={"alpha": 1}, room=1)
    outcome: list[Recorded] = []

    def record_the_duplicate() -> None:
        outcome.append(record_command(duplicate))

    # Connection 1 completes the request and has queued its completed receipt, but not committed yet.
    with engine.begin() as conn:
        finished = completing._finish(conn, claimed, states.Confirm("erased"), TaskUpdate(), now)
        assert finished is not None and finished.status == states.RequestStatus.COMPLETED
        thread = threading.Thread(target=record_the_duplicate)
        thread.start()
        thread.join(0.5)
        waited = thread.is_alive()  # connection 2 waits for the request lock
    thread.join(10)
    assert outcome == [Recorded.DUPLICATE]
    statuses = _statuses(engine, request_id)
    assert statuses[-1] == "completed", statuses
    assert waited
    engine.dispose()


# --- the relay on a real broker ---------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def _store(engine: sa.Engine, settings: Settings, actor: str) -> Store:
    return Store(engine, topics=settings.kafka.topics, policy=states.RetryPolicy(), actor=actor)


def _drain(relay: Relay, store: Store, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while store.outbox.batch(1) or relay.pending():
        assert time.monotonic() < deadline, "the relay did not drain the outbox"
        relay.tick()
        time.sleep(0.01)


def _record(store: Store, now: datetime) -> str:
    return record(store, {"alpha": 3}, now=now, customer_id=f"C-{uuid.uuid4().hex[:8]}")


def _complete(store: Store, request_ids: list[str], now: datetime) -> None:
    claimed = store.claim_due(now=now, lease_until=now + timedelta(minutes=1), limits={"alpha": 10}, room=10)
    assert sorted(t.request_id for t in claimed) == sorted(request_ids)
    for task in claimed:
        assert store.finish(task, states.Confirm("erased"), TaskUpdate(), now) is not None


def test_a_stalled_relay_cannot_publish_its_old_batch_after_a_newer_leader(
        pg_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={}))
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    first, second = _store(engine, settings, "w1"), _store(engine, settings, "w2")
    clock = Clock()
    stale, newer = Relay(first, producer_config(settings.kafka), clock=clock), \
        Relay(second, producer_config(settings.kafka), clock=clock)
    requests = [_record(first, clock.now) for _ in range(3)]  # the outbox: three `accepted` receipts

    # The first relay leads, reads its batch... and stalls before handing it to the broker (a GC pause).
    read, resume = threading.Event(), threading.Event()
    read_batch = first.outbox.batch

    def stalling_batch(limit: int) -> list[OutboxRecord]:
        records = read_batch(limit)
        if records and not read.is_set():
            read.set()
            resume.wait(60)
        return records

    monkeypatch.setattr(first.outbox, "batch", stalling_batch)

    def lead() -> None:
        while not read.is_set():
            stale.tick()
        for _ in range(200):  # resumed: it publishes its batch and tries to commit it
            stale.tick()
            if stale.held is None or stale.producer is None:
                return
            time.sleep(0.01)

    leader = threading.Thread(target=lead)
    leader.start()
    assert read.wait(30)
    try:
        _complete(second, requests, clock.now)  # each request's `completed` receipt follows its `accepted`
        clock.now += timedelta(seconds=20)  # the stalled leader's lease runs out; the second relay takes over
        _drain(newer, second)
    finally:
        resume.set()
    leader.join(30)
    assert not leader.is_alive()

    receipts = read_topic(settings, settings.kafka.topics.receipts)
    published = {r: [json.loads(m.value())["status"] for m in receipts if m.key() == r.encode()] for r in requests}
    # Published once, by the newer leader: the stalled relay's records were never committed. (A claim's
    # in_progress receipt is coalesced into the result's: accepted and the end always go out.)
    assert published == {r: ["accepted", "completed"] for r in requests}
    assert stale.held is None or stale.producer is None  # it was fenced
    assert first.outbox.batch(10) == []
    newer.release()
    engine.dispose()


def test_only_the_current_lease_token_renews_the_lease_and_deletes_rows(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store, restarted = (Store(engine, topics=TOPICS, policy=states.RetryPolicy(), actor="w1") for _ in range(2))
    other = Store(engine, topics=TOPICS, policy=states.RetryPolicy(), actor="w2")
    now, ttl = utcnow(), timedelta(seconds=15)
    _record(store, now)
    ids = [r.id for r in store.outbox.batch(10)]
    old, new = Held("outbox-relay", "old"), Held("outbox-relay", "new")
    assert store.outbox.acquire_lease(old.name, now=now, ttl=ttl, token=old.token)
    assert not other.outbox.acquire_lease(old.name, now=now, ttl=ttl, token="other")
    # A restarted worker (same name) takes its dead incarnation's lease at once, under a new token...
    assert restarted.outbox.acquire_lease(new.name, now=now, ttl=ttl, token=new.token)
    # ...and the old incarnation, if it still runs, can neither renew it nor delete rows.
    assert not store.outbox.renew_lease(old, now=now, ttl=ttl)
    assert not store.outbox.delete(ids, held=old)
    assert [r.id for r in store.outbox.batch(10)] == ids
    assert restarted.outbox.renew_lease(new, now=now, ttl=ttl)
    assert restarted.outbox.delete(ids, held=new)
    assert store.outbox.batch(10) == []
    engine.dispose()


def test_deleting_published_rows_is_one_statement_that_skips_the_wal_flush_and_only_for_itself(pg_url: str) -> None:
    """A lost delete only publishes rows again, so its commit need not wait for the disk; every other transaction
    on the same pooled connection (results, intake) still does."""
    engine = db.create_engine(pg_url, pool_size=1)

    @sa.event.listens_for(engine, "connect")
    def _durable(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("SET synchronous_commit = on")  # the test cluster's default is off, for speed
        dbapi_connection.commit()

    db.migrate(engine)
    store = Store(engine, topics=TOPICS, policy=states.RetryPolicy(), actor="w1")
    now, held = utcnow(), Held("outbox-relay", "sync-test")
    _record(store, now)
    ids = [r.id for r in store.outbox.batch(10)]
    assert ids and store.outbox.acquire_lease(held.name, now=now, ttl=timedelta(seconds=15), token=held.token)
    sent: list[str] = []
    ends: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _sent(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    @sa.event.listens_for(engine, "commit")
    def _ended(conn: sa.Connection) -> None:
        ends.append(conn.connection.driver_connection.execute("SHOW synchronous_commit").fetchone()[0])

    assert store.outbox.delete(ids, held=held)
    assert store.outbox.batch(10) == []
    # One statement in a transaction of its own: the lease's check, the lock and the delete in one round trip.
    assert len(sent) == 2 and "DELETE FROM outbox" in sent[0] and ends == []
    with engine.begin() as conn:  # what that statement sets holds for its own transaction, and no longer
        conn.execute(_held_delete_statement(), {"ids": [], "name": held.name, "token": held.token})
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    assert ends == ["off"]
    _record(store, now)  # a durable transaction on the same connection
    assert ends == ["off", "on"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
    engine.dispose()


@pytest.fixture
def small_broker(tmp_path: Path) -> Iterator[PrivateKafka]:
    """A broker that refuses any record batch over 16 KiB (the default is 1 MiB)."""
    services.require_kafka()  # the shared broker's jars and Java are what this one runs on
    broker = PrivateKafka(tmp_path, {"message.max.bytes": str(16 * 1024)})
    broker.start()
    yield broker
    broker.stop()


def test_a_dlq_record_too_large_for_the_broker_is_replaced_by_a_reference_and_the_relay_goes_on(
        small_broker: PrivateKafka, pg_url: str) -> None:
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=small_broker.bootstrap, systems={}))
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = _store(engine, settings, "w1")
    now = utcnow()
    big, small = os.urandom(40 * 1024), b'{"not": "a command"}'  # random bytes: no codec makes them fit
    for raw in (big, small):  # same key, so both land in one partition's batch and share its answer
        store.record_invalid(request_id=None, code="too_large", message="over 64 KiB", raw=raw, key=b"C-42",
                             headers=[("x-sender-note", b"marie@example.fr")], source="commands/3/17", now=now)
    with store.engine.begin() as conn:  # a receipt the broker refuses too (none is this large in practice)
        conn.execute(outbox.insert().values(topic=settings.kafka.topics.receipts, key=b"req-oversized",
                                            value=b"{" + b" " * 20_000 + b"}", created_at=now,
                                            headers_json=json.dumps([("x-oubli-status", "in_progress")])))
    request_id = _record(store, now)  # and a real receipt behind them all
    relay = Relay(store, producer_config(settings.kafka), clock=lambda: now)
    with capture_logs() as logs:
        _drain(relay, store)
    relay.release()

    [receipt] = read_topic(settings, settings.kafka.topics.receipts)
    assert receipt.key() == request_id.encode() and json.loads(receipt.value())["status"] == "accepted"
    dlq = {m.value(): m for m in read_topic(settings, settings.kafka.topics.dlq)}
    assert small in dlq and dlq[small].key() == b"C-42"  # refused with its batch, then sent alone: intact
    [reference] = [m for value, m in dlq.items() if value != small]
    digest = hashlib.sha256(big).hexdigest()
    sent_headers = [("x-sender-note", "marie@example.fr"), ("x-oubli-error-code", "too_large"),
                    ("x-oubli-error-message", "over 64 KiB"), ("x-oubli-source", "commands/3/17")]
    assert reference.key() is None
    assert json.loads(reference.value()) == {
        "oubli_dlq_reference": 1, "kafka_error": "MSG_SIZE_TOO_LARGE", "sha256": digest, "size_bytes": len(big),
        "key_bytes": 4, "header_bytes": sum(len(k) + len(v) for k, v in sent_headers)}
    assert dict(reference.headers() or []) == {
        "x-oubli-error-code": b"too_large", "x-oubli-error-message": b"over 64 KiB",
        "x-oubli-source": b"commands/3/17", "x-oubli-dlq-reference": f"sha256:{digest}".encode()}
    dropped = [e for e in logs if e["event"] == "outbox_record_dropped"]
    assert [(e["request_id"], e["status"], e["code"]) for e in dropped] == [
        ("req-oversized", "in_progress", "MSG_SIZE_TOO_LARGE")]
    assert "marie" not in repr(logs)
    assert store.outbox.batch(1) == []
    engine.dispose()


def test_a_dlq_record_over_the_clients_own_limit_is_replaced_without_reaching_the_broker(
        pg_url: str, kafka_bootstrap: str) -> None:
    # A command that arrived compressed can be larger, raw, than librdkafka's message.max.bytes (1 MB by
    # default): produce() itself refuses it. Here the client's limit is made small instead.
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={}))
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = _store(engine, settings, "w1")
    now = utcnow()
    big = os.urandom(20_000)
    store.record_invalid(request_id=None, code="too_large", message="over 64 KiB", raw=big, key=b"C-7",
                         headers=[], source="commands/1/5", now=now)
    request_id = _record(store, now)
    relay = Relay(store, {**producer_config(settings.kafka), "message.max.bytes": 10_000}, clock=lambda: now)
    _drain(relay, store)
    relay.release()

    [receipt] = read_topic(settings, settings.kafka.topics.receipts)
    assert receipt.key() == request_id.encode()
    [reference] = read_topic(settings, settings.kafka.topics.dlq)
    body = json.loads(reference.value())
    assert (body["kafka_error"], body["size_bytes"], body["sha256"]) == (
        "MSG_SIZE_TOO_LARGE", len(big), hashlib.sha256(big).hexdigest())
    assert dict(reference.headers() or [])["x-oubli-source"] == b"commands/1/5"
    engine.dispose()


def test_a_store_error_in_the_middle_of_a_send_does_not_leave_the_relay_wedged_in_its_transaction(
        pg_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send failing between ``begin_transaction`` and its batch (here the store, out just as a refused DLQ record
    is replaced by its reference) left the producer's transaction open: every later ``begin_transaction`` raised
    _STATE, and no receipt was ever published again until the worker restarted."""
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={}))
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = _store(engine, settings, "w1")
    now = utcnow()
    store.record_invalid(request_id=None, code="too_large", message="over 64 KiB", raw=os.urandom(20_000),
                         key=b"C-8", headers=[], source="commands/1/6", now=now)
    request_id = _record(store, now)
    relay = Relay(store, {**producer_config(settings.kafka), "message.max.bytes": 10_000}, clock=lambda: now)
    real_replace = store.outbox.replace

    def store_out(*_args: Any, **_kwargs: Any) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(store.outbox, "replace", store_out)
    deadline = time.monotonic() + 30
    with pytest.raises(sa.exc.OperationalError):  # what the loop's guard catches and retries
        while time.monotonic() < deadline:
            relay.tick()
            time.sleep(0.01)
    monkeypatch.setattr(store.outbox, "replace", real_replace)  # the store is back
    _drain(relay, store)
    relay.release()
    [receipt] = read_topic(settings, settings.kafka.topics.receipts)
    assert receipt.key() == request_id.encode()
    assert len(read_topic(settings, settings.kafka.topics.dlq)) == 1
    engine.dispose()


def test_a_batch_the_broker_acknowledged_is_committed_while_the_store_is_out(
        pg_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay renewed its lease (a store round trip) before it committed a settled batch: with the store gone
    at that moment the transaction stayed open until the store came back or the broker's transaction timeout
    (60 s) aborted it, and every read_committed reader of the receipts topic stalled behind it meanwhile."""
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={}))
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = _store(engine, settings, "w1")
    clock = Clock()
    request_id = _record(store, clock.now)
    relay = Relay(store, producer_config(settings.kafka), clock=clock)
    deadline = time.monotonic() + 30
    while not relay.pending():  # leads, starts, sends the `accepted` receipt
        assert time.monotonic() < deadline, "the relay sent nothing"
        relay.tick()
    assert relay.producer is not None and relay.in_flight is not None
    assert relay.wait(30.0), "the broker did not acknowledge the batch"  # acknowledged, not committed yet
    started = time.monotonic()
    assert relay.in_flight.settled() and relay.wait(30.0) is False  # nothing left to wait for: at once
    assert time.monotonic() - started < 1.0

    def store_out(*_args: Any, **_kwargs: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

    real = {name: getattr(store.outbox, name) for name in ("renew_lease", "batch", "delete")}
    for name in real:
        monkeypatch.setattr(store.outbox, name, store_out)
    clock.now += timedelta(seconds=10)  # the lease's renewal is due: the next tick asks the store
    for _ in range(30):  # the loop's turns during the outage: its guard catches the store's error each time
        with pytest.raises(sa.exc.OperationalError):
            relay.tick()
        time.sleep(0.1)
    receipts = read_topic(settings, settings.kafka.topics.receipts)
    assert [m.key() for m in receipts] == [request_id.encode()]  # readable while the store is still out

    for name, method in real.items():  # the store is back: the published rows are deleted, nothing is sent twice
        monkeypatch.setattr(store.outbox, name, method)
    _drain(relay, store)
    assert store.outbox.batch(10) == []
    assert [m.key() for m in read_topic(settings, settings.kafka.topics.receipts)] == [request_id.encode()]
    relay.release()
    engine.dispose()
