"""An in-memory Kafka for the loop's unit tests: topics with partitions and offsets, consumer groups with
committed offsets and cooperative rebalances (callbacks fired inside ``consume``), pause/resume/seek,
``consume`` batches, and a transactional producer (records visible on commit, as ``read_committed``). A record
batch the client cannot read (``append_unreadable``) is reported as librdkafka does: an error at the batch's base
offset, from any position inside it, on every fetch, and the position does not move.

It implements ``worker.broker.Consumer``/``Producer`` as the loop and the outbox relay use them;
tests/integration/test_broker_contract.py runs the same assertions against it and real Kafka.
Single-threaded; nothing blocks: ``consume`` returns at once with what is there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from worker.kafka import partition_for

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class MemRecord:
    """A stored record, with ``confluent_kafka.Message``'s accessors."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: Headers | None
    _error: KafkaError | None = None
    _unreadable_base: int | None = None  # stored in a batch the client cannot read, which starts there

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return list(self._headers) if self._headers else None

    def error(self) -> KafkaError | None:
        return self._error


def _bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


class MemBroker:
    def __init__(self, partitions: int = 6) -> None:
        self.default_partitions = partitions
        self.logs: dict[str, list[list[MemRecord]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> next offset
        self.groups: dict[str, list[MemConsumer]] = {}
        self.owners: dict[tuple[str, str, int], MemConsumer] = {}  # (group, topic, partition) -> its member
        self.epochs: dict[str, int] = {}  # transactional.id -> the newest producer's epoch
        self._round_robin = 0

    # --- topics -------------------------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        self.logs.setdefault(topic, [[] for _ in range(partitions or self.default_partitions)])

    def partitions(self, topic: str) -> int:
        self.create_topic(topic)
        return len(self.logs[topic])

    def append(self, topic: str, *, key: str | bytes | None = None, value: str | bytes | None = None,
               headers: Sequence[tuple[str, Any]] | None = None, partition: int | None = None) -> MemRecord:
        """Writes one record at once (no transaction); the partition is Kafka's murmur2 one for a key."""
        count = self.partitions(topic)
        key_bytes = _bytes(key)
        if partition is None or partition < 0:
            if key_bytes is None:
                self._round_robin += 1
                partition = self._round_robin % count
            else:
                partition = partition_for(key_bytes, count)
        log = self.logs[topic][partition]
        pairs = [(str(k), _bytes(v) or b"") for k, v in headers] if headers else None
        record = MemRecord(topic, partition, len(log), key_bytes, _bytes(value), pairs)
        log.append(record)
        return record

    def append_unreadable(self, topic: str, partition: int, count: int) -> range:
        """Writes one record batch of ``count`` records that no client can read (a compression bomb); returns
        its offsets."""
        self.create_topic(topic)
        log = self.logs[topic][partition]
        base = len(log)
        log += [MemRecord(topic, partition, base + i, None, None, None, _unreadable_base=base) for i in range(count)]
        return range(base, base + count)

    def records(self, topic: str) -> list[MemRecord]:
        """Every record of ``topic``, partition by partition, in log order."""
        self.create_topic(topic)
        return [r for log in self.logs[topic] for r in log]

    def high(self, topic: str, partition: int) -> int:
        self.create_topic(topic)
        return len(self.logs[topic][partition])

    # --- clients ------------------------------------------------------------------------------

    def consumer(self, config: dict[str, Any] | None = None) -> MemConsumer:
        return MemConsumer(self, str((config or {}).get("group.id", "oubli")))

    def producer(self, config: dict[str, Any] | None = None) -> MemProducer:
        return MemProducer(self, dict(config or {}))

    # --- groups -------------------------------------------------------------------------------

    def _join(self, member: MemConsumer) -> None:
        members = self.groups.setdefault(member.group, [])
        if member not in members:
            members.append(member)
        self._rebalance(member.group)

    def _released(self, member: MemConsumer, tps: list[tuple[str, int]]) -> None:
        """A member's revoke callback returned: its partitions (and their commits) may go to another."""
        for tp in tps:
            if self.owners.get((member.group, *tp)) is member:
                del self.owners[(member.group, *tp)]
        self._rebalance(member.group)

    def _rebalance(self, group: str) -> None:
        """Cooperative: a member keeps what it may keep; a moving partition is revoked first, and assigned to
        its new member only once the old one's revoke callback ran (so its commit is what the new one reads)."""
        members = self.groups.get(group, [])
        wanted = sorted({(t, p) for m in members for t in m.topics for p in range(self.partitions(t))})
        target: dict[int, set[tuple[str, int]]] = {id(m): set() for m in members}
        for i, tp in enumerate(wanted):
            target[id(members[i % len(members)])].add(tp)
        for (g, topic, partition), owner in list(self.owners.items()):
            tp = (topic, partition)
            if g == group and tp not in target.get(id(owner), set()) and tp not in owner.revoking:
                owner.revoking.add(tp)
                owner.events.append(("revoke", [tp]))
        for member in members:
            free = sorted(tp for tp in target[id(member)] if (group, *tp) not in self.owners)
            for tp in free:
                self.owners[(group, *tp)] = member
            if free:
                member.events.append(("assign", free))


@dataclass
class MemConsumer:
    broker: MemBroker
    group: str
    topics: list[str] = field(default_factory=list)
    owned: set[tuple[str, int]] = field(default_factory=set)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    stored: dict[tuple[str, int], int] = field(default_factory=dict)
    paused: set[tuple[str, int]] = field(default_factory=set)
    revoking: set[tuple[str, int]] = field(default_factory=set)
    events: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)  # callbacks not yet fired
    callbacks: dict[str, Callable[[Any, list[TopicPartition]], None] | None] = field(default_factory=dict)
    closed: bool = False
    turn: int = 0

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None) -> None:
        self.topics = list(topics)
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.broker._join(self)

    def _fire(self) -> None:
        """Runs the rebalance callbacks due, as librdkafka does inside ``consume``/``poll``."""
        while self.events:
            kind, tps = self.events.pop(0)
            if kind == "assign":
                for tp in tps:
                    self.owned.add(tp)
                    committed = self.broker.committed.get((self.group, *tp))
                    self.positions[tp] = committed if committed is not None else 0  # auto.offset.reset: earliest
            callback = self.callbacks.get(kind)
            if callback is not None:
                callback(self, [TopicPartition(t, p) for t, p in tps])
            if kind == "revoke":
                for tp in tps:
                    for held in (self.owned, self.revoking, self.paused):
                        held.discard(tp)
                    self.positions.pop(tp, None)
                    self.stored.pop(tp, None)
                self.broker._released(self, tps)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[MemRecord]:
        self._check_open()
        self._fire()
        batch: list[MemRecord] = []
        owned = sorted(self.owned)
        self.turn += 1  # start each batch at the next partition, so that none is starved
        for tp in owned[self.turn % len(owned):] + owned[:self.turn % len(owned)] if owned else []:
            if tp in self.paused:
                continue
            log = self.broker.logs[tp[0]][tp[1]]
            position = self.positions[tp]
            taken = log[position:position + num_messages - len(batch)]
            unreadable = [i for i, record in enumerate(taken) if record._unreadable_base is not None]
            if unreadable:  # what comes before the bad batch, then its error; the fetch goes no further
                bad = taken[unreadable[0]]
                taken = taken[:unreadable[0]]
                base = bad._unreadable_base or 0
                error = KafkaError(KafkaError._BAD_COMPRESSION, "decompression failed")
                batch.extend([*taken, MemRecord(bad._topic, bad._partition, base, None, None, None, error)])
                self.positions[tp] = position + len(taken)
                if len(batch) >= num_messages:
                    break
                continue
            batch.extend(taken)
            self.positions[tp] = position + len(taken)
            if len(batch) >= num_messages:
                break
        return batch

    def poll(self, timeout: float = -1) -> MemRecord | None:
        batch = self.consume(1, timeout)
        return batch[0] if batch else None

    def store_offsets(self, message: MemRecord | None = None, offsets: list[TopicPartition] | None = None) -> None:
        if message is not None:
            offsets = [TopicPartition(message.topic(), message.partition(), message.offset() + 1)]
        for tp in offsets or []:
            if (tp.topic, tp.partition) not in self.owned:
                raise KafkaException(KafkaError(KafkaError._STATE, "partition not assigned"))
            self.stored[(tp.topic, tp.partition)] = tp.offset

    def commit(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> list[TopicPartition]:
        self._check_open()
        pending = {tp: o for tp, o in self.stored.items()
                   if tp in self.owned and self.broker.committed.get((self.group, *tp)) != o}
        if not pending:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET, "no offset to commit"))
        for tp, offset in pending.items():
            self.broker.committed[(self.group, *tp)] = offset
        return [TopicPartition(t, p, o) for (t, p), o in sorted(pending.items())]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self.broker.committed.get((self.group, tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def seek(self, partition: TopicPartition) -> None:
        tp = (partition.topic, partition.partition)
        if tp not in self.owned:
            raise KafkaException(KafkaError(KafkaError._STATE, "partition not assigned"))
        self.positions[tp] = partition.offset

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.owned)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        return 0, self.broker.high(partition.topic, partition.partition)

    def close(self) -> None:
        if self.closed:
            return
        self.events = [e for e in self.events if e[0] == "revoke"]  # never assigned now
        if self.owned - self.revoking:
            self.events.append(("revoke", sorted(self.owned - self.revoking)))
        members = self.broker.groups.get(self.group, [])
        if self in members:
            members.remove(self)
        self._fire()
        self.closed = True
        self.broker._rebalance(self.group)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")


class MemProducer:
    """Transactional when its config names a ``transactional.id``: records are visible on commit only,
    a newer producer's ``init_transactions`` fences the older one. Delivery reports come from ``poll``/
    ``flush``, as librdkafka's do."""

    def __init__(self, broker: MemBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.transactional_id = config.get("transactional.id")
        self.epoch: int | None = None
        self.in_transaction = False
        self.buffered: list[tuple[str, dict[str, Any]]] = []
        self.reports: list[tuple[Callable[[KafkaError | None, Any], None], Any]] = []

    def init_transactions(self, timeout: float = -1) -> None:
        assert self.transactional_id is not None, "init_transactions needs a transactional.id"
        self.epoch = self.broker.epochs.get(self.transactional_id, 0) + 1
        self.broker.epochs[self.transactional_id] = self.epoch

    def begin_transaction(self) -> None:
        if self.epoch is None:
            raise KafkaException(KafkaError(KafkaError._STATE, "init_transactions first"))
        self.in_transaction = True

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                on_delivery: Callable[[KafkaError | None, Any], None] | None = None, timestamp: int = 0,
                headers: Sequence[tuple[str, Any]] | None = None) -> None:
        if self.transactional_id is not None and self.epoch is not None and not self.in_transaction:
            raise KafkaException(KafkaError(KafkaError._STATE, "produce outside a transaction"))
        args = {"key": key, "value": value, "headers": headers, "partition": partition}
        if self.in_transaction:
            self.buffered.append((topic, args))
            record: Any = None
        else:
            record = self.broker.append(topic, **args)
        if on_delivery is not None:
            self.reports.append((on_delivery, record))

    def poll(self, timeout: float = 0) -> int:
        reports, self.reports = self.reports, []
        for callback, record in reports:
            callback(None, record)
        return len(reports)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return 0

    def commit_transaction(self, timeout: float = -1) -> None:
        self._check_fenced()
        self.poll(0)
        for topic, args in self.buffered:
            self.broker.append(topic, **args)
        self.buffered, self.in_transaction = [], False

    def abort_transaction(self, timeout: float = -1) -> None:
        self.buffered, self.reports, self.in_transaction = [], [], False

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.reports = []

    def _check_fenced(self) -> None:
        if self.transactional_id is not None and self.epoch is not None \
                and self.broker.epochs.get(self.transactional_id) != self.epoch:
            raise KafkaException(KafkaError(KafkaError._FENCED, "a newer producer fenced this one", fatal=True))
