"""One contract, two brokers: what the loop and the relay rely on, checked against the in-memory broker
(devkit.membroker, which the loop's unit tests use) and the real Kafka, so the fake cannot drift."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from devkit.membroker import MemBroker
from worker import kafka
from worker.config import KafkaSettings

PARTITIONS = 3
# The consumer's cap that makes ``Side.send_unreadable``'s batch a bomb (the worker's is 100 MB by default).
CAPPED_CLIENT = {"receive.message.max.bytes": "1000000", "fetch.max.bytes": "500000", "message.max.bytes": "400000"}


class Side:
    """One broker behind the same calls: fresh topics, consumers of a group, producers."""

    def __init__(self, bootstrap: str | None) -> None:
        self.bootstrap = bootstrap
        self.memory = MemBroker(PARTITIONS) if bootstrap is None else None
        self.clients: list[Any] = []
        self.patience = 0.0 if self.memory else 30.0  # how long a real broker may take to rebalance

    def topic(self) -> str:
        name = f"contract-{uuid.uuid4().hex[:10]}"
        if self.memory is not None:
            self.memory.create_topic(name, PARTITIONS)
        else:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for future in admin.create_topics([NewTopic(name, PARTITIONS, 1)]).values():
                future.result()
            kafka._wait_for_leaders(admin, [name])
        return name

    def consumer(self, group: str, client_config: dict[str, str] | None = None) -> Any:
        if self.memory is not None:
            client: Any = self.memory.consumer({"group.id": group})
        else:
            settings = KafkaSettings(bootstrap_servers=self.bootstrap or "", group_id=group, session_timeout_ms=6000,
                                     client=client_config or {})
            client = Consumer(kafka.consumer_config(settings))
        self.clients.append(client)
        return client

    def producer(self, transactional_id: str | None = None) -> Any:
        if self.memory is not None:
            return self.memory.producer({"transactional.id": transactional_id} if transactional_id else {})
        settings = KafkaSettings(bootstrap_servers=self.bootstrap or "")
        config = kafka.producer_config(settings)
        if transactional_id:
            config["transactional.id"] = transactional_id
        return Producer(config)

    def send(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        producer = self.producer()
        for key, value in records:
            producer.produce(topic, key=key, value=value, headers=[("h", b"v")])
        assert producer.flush(10) == 0

    def send_unreadable(self, topic: str, partition: int, count: int) -> None:
        """One record batch of ``count`` records that a client capped with ``CAPPED_CLIENT`` cannot read: a zstd
        batch whose first record inflates past the cap (1.5 MB of one byte, a few hundred bytes on the wire)."""
        if self.memory is not None:
            self.memory.append_unreadable(topic, partition, count)
            return
        producer = Producer({"bootstrap.servers": self.bootstrap, "compression.type": "zstd", "linger.ms": 1000,
                             "message.max.bytes": 10_000_000, "batch.size": 10_000_000})
        producer.produce(topic, partition=partition, value=b"a" * 1_500_000)
        for i in range(count - 1):
            producer.produce(topic, partition=partition, value=f"caught-{i}".encode())
        assert producer.flush(30) == 0

    def until(self, consumer: Any, done: Callable[[list[Any]], bool], *, batch: int = 100) -> list[Any]:
        """Consumes batches until ``done`` holds for everything consumed (at once in memory)."""
        got: list[Any] = []
        deadline = time.monotonic() + max(self.patience, 0.001)
        while True:
            got += [m for m in consumer.consume(num_messages=batch, timeout=0.2) if m.error() is None]
            if done(got) or time.monotonic() > deadline:
                return got

    def close(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except RuntimeError:  # closed by the test
                pass


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    bootstrap = request.getfixturevalue("kafka_bootstrap") if request.param == "kafka" else None
    s = Side(bootstrap)
    yield s
    s.close()


def _subscribe(side: Side, topic: str, group: str, log: list[tuple[str, list[int]]],
               before_revoke: Callable[[Any], None] | None = None) -> Any:
    consumer = side.consumer(group)

    def note(kind: str) -> Callable[[Any, list[TopicPartition]], None]:
        def callback(client: Any, partitions: list[TopicPartition]) -> None:
            if kind == "revoke" and before_revoke is not None:
                before_revoke(client)
            log.append((kind, sorted(p.partition for p in partitions)))
        return callback

    consumer.subscribe([topic], on_assign=note("assign"), on_revoke=note("revoke"), on_lost=note("lost"))
    return consumer


def _commit(consumer: Any) -> None:
    """What the loop does on revoke: commit what it stored; nothing stored is no error."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            raise


def test_batches_keep_partition_order_keys_and_headers_and_offsets_commit(side: Side) -> None:
    topic, group = side.topic(), f"g-{uuid.uuid4().hex[:8]}"
    records = [(f"C-{i % 5}".encode(), f"v{i}".encode()) for i in range(20)]
    side.send(topic, records)
    log: list[tuple[str, list[int]]] = []
    consumer = _subscribe(side, topic, group, log)
    got = side.until(consumer, lambda g: len(g) >= 20, batch=7)
    assert len(got) == 20 and ("assign", list(range(PARTITIONS))) in log
    for message in got:
        assert message.partition() == kafka.partition_for(message.key(), PARTITIONS)  # murmur2, as Java
        assert message.headers() == [("h", b"v")]
    for partition in range(PARTITIONS):
        offsets = [m.offset() for m in got if m.partition() == partition]
        assert offsets == list(range(len(offsets)))
    assert [m.value() for m in got if m.key() == b"C-1"] == [v for k, v in records if k == b"C-1"]
    first = next(m for m in got if m.partition() == got[0].partition())
    consumer.store_offsets(first)
    consumer.commit(asynchronous=False)
    tp = TopicPartition(topic, first.partition())
    assert consumer.committed([tp], timeout=10)[0].offset == first.offset() + 1
    with pytest.raises(KafkaException) as nothing:
        consumer.commit(asynchronous=False)  # nothing stored since the last commit
    assert nothing.value.args[0].code() == KafkaError._NO_OFFSET
    low, high = consumer.get_watermark_offsets(tp, timeout=10)
    assert low == 0 and high == sum(1 for m in got if m.partition() == first.partition())


def test_seek_rewinds_and_pause_holds_a_partition(side: Side) -> None:
    topic, group = side.topic(), f"g-{uuid.uuid4().hex[:8]}"
    side.send(topic, [(b"same-key", f"v{i}".encode()) for i in range(4)])
    consumer = _subscribe(side, topic, group, [])
    got = side.until(consumer, lambda g: len(g) >= 4)
    partition = got[0].partition()
    consumer.seek(TopicPartition(topic, partition, 1))
    again = side.until(consumer, lambda g: len(g) >= 3)
    assert [m.offset() for m in again] == [1, 2, 3]
    consumer.pause(consumer.assignment())
    consumer.seek(TopicPartition(topic, partition, 2))
    side.send(topic, [(b"same-key", b"v4")])
    assert [m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None] == []
    consumer.resume(consumer.assignment())
    assert [m.offset() for m in side.until(consumer, lambda g: len(g) >= 3)] == [2, 3, 4]


def test_an_unreadable_batch_is_reported_at_its_base_offset_from_anywhere_inside_it(side: Side) -> None:
    """What worker.badbatch relies on: the client reports a batch it cannot read by its base offset, again on every
    fetch and after a seek to any offset inside it, and a seek past the batch reads on from there."""
    topic, group = side.topic(), f"g-{uuid.uuid4().hex[:8]}"
    partition = 1
    producer = side.producer()
    producer.produce(topic, partition=partition, value=b"before")
    assert producer.flush(10) == 0
    side.send_unreadable(topic, partition, 5)  # offsets 1..5
    producer.produce(topic, partition=partition, value=b"after")  # offset 6
    assert producer.flush(10) == 0
    consumer = side.consumer(group, CAPPED_CLIENT)
    consumer.subscribe([topic])

    def first_answer(seek_to: int | None) -> tuple[int, str | None]:
        """The first thing the partition hands back after a seek: (offset, error name)."""
        if seek_to is not None:
            consumer.seek(TopicPartition(topic, partition, seek_to))
        deadline = time.monotonic() + max(side.patience, 0.001)
        while True:
            for message in consumer.consume(num_messages=100, timeout=0.2):
                if message.partition() == partition and message.topic() == topic:
                    error = message.error()
                    return message.offset(), error.name() if error is not None else None
            assert time.monotonic() < deadline, "no answer"

    assert first_answer(None) == (0, None)
    assert first_answer(None) == (1, "_BAD_COMPRESSION")
    assert first_answer(None) == (1, "_BAD_COMPRESSION")  # fetched again: the position does not move
    for inside in (2, 5):
        assert first_answer(inside) == (1, "_BAD_COMPRESSION")
    assert first_answer(6) == (6, None)


def test_a_joining_member_takes_partitions_after_the_revoke_callback_committed(side: Side) -> None:
    topic, group = side.topic(), f"g-{uuid.uuid4().hex[:8]}"
    side.send(topic, [(f"k{i}".encode(), b"v") for i in range(30)])
    first_log: list[tuple[str, list[int]]] = []
    first = _subscribe(side, topic, group, first_log, before_revoke=_commit)
    got = side.until(first, lambda g: len(g) >= 30)
    for message in got:
        first.store_offsets(message)
    second_log: list[tuple[str, list[int]]] = []
    second = _subscribe(side, topic, group, second_log)
    late: list[Any] = []
    deadline = time.monotonic() + side.patience
    while True:
        late += [m for m in first.consume(num_messages=10, timeout=0.1) if m.error() is None]
        late += [m for m in second.consume(num_messages=10, timeout=0.1) if m.error() is None]
        if any(ps for kind, ps in second_log if kind == "assign") or time.monotonic() > deadline:
            break
    revoked = [p for kind, ps in first_log if kind == "revoke" for p in ps]
    moved = [p for kind, ps in second_log if kind == "assign" for p in ps]
    assert moved and sorted(moved) == sorted(revoked)  # cooperative: only what moves is revoked
    assert late == []  # the new owner starts after the offsets the old one committed in its callback
    assert sorted(p.partition for p in first.assignment()) == sorted(set(range(PARTITIONS)) - set(moved))


def test_a_partition_moved_away_refuses_storing_an_offset_or_seeking(side: Side) -> None:
    """What the loop guards against (worker.loop._record, _intake_failed): a record fetched before its partition
    was revoked is still in the loop's hands, and the client refuses to store its offset or seek there."""
    topic, group = side.topic(), f"g-{uuid.uuid4().hex[:8]}"
    side.send(topic, [(f"k{i}".encode(), b"v") for i in range(30)])
    first_log: list[tuple[str, list[int]]] = []
    first = _subscribe(side, topic, group, first_log)
    got = side.until(first, lambda g: len(g) >= 30)
    second = _subscribe(side, topic, group, [])
    deadline = time.monotonic() + side.patience
    while True:
        first.consume(num_messages=10, timeout=0.1)
        second.consume(num_messages=10, timeout=0.1)
        if any(kind == "revoke" for kind, _ in first_log) or time.monotonic() > deadline:
            break
    moved = {p for kind, ps in first_log if kind == "revoke" for p in ps}
    assert moved
    stale = next(m for m in got if m.partition() in moved)
    with pytest.raises(KafkaException) as storing:
        first.store_offsets(stale)
    with pytest.raises(KafkaException) as seeking:
        first.seek(TopicPartition(topic, stale.partition(), 0))
    assert storing.value.args[0].code() == seeking.value.args[0].code() == KafkaError._STATE


def test_transactions_show_committed_records_only_and_a_newer_producer_fences_the_older(side: Side) -> None:
    topic, group, tx = side.topic(), f"g-{uuid.uuid4().hex[:8]}", f"tx-{uuid.uuid4().hex[:8]}"
    producer = side.producer(tx)
    producer.init_transactions(10)
    delivered: list[Any] = []
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted", on_delivery=lambda err, _m: delivered.append(err))
    producer.flush(10)
    producer.abort_transaction(10)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed", on_delivery=lambda err, _m: delivered.append(err))
    producer.poll(0)
    producer.commit_transaction(10)
    assert delivered and all(err is None for err in delivered)
    consumer = _subscribe(side, topic, group, [])
    assert [m.value() for m in side.until(consumer, lambda g: len(g) >= 1)] == [b"committed"]

    newer = side.producer(tx)
    newer.init_transactions(10)  # fences the first
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"fenced")
    with pytest.raises(KafkaException):
        producer.commit_transaction(10)
    newer.begin_transaction()
    newer.produce(topic, key=b"k", value=b"newer")
    newer.commit_transaction(10)
    values = [m.value() for m in side.until(consumer, lambda g: len(g) >= 1)]
    assert values == [b"newer"]
