"""Kafka client settings and helpers, in one place so every client agrees on them."""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from worker import logs
from worker.config import KafkaSettings

COMMAND_PARTITIONS = 6


# How long a CLI command waits for a first metadata answer before it calls the broker unreachable
# (exit 4). A reachable broker answers in milliseconds; librdkafka keeps retrying a closed port until then.
METADATA_TIMEOUT = 10.0


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    return {
        **kafka.client,
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": logs.librdkafka_logger(),
        "enable.idempotence": True,
        "acks": "all",
        # Java clients hash keys with murmur2; librdkafka's default is CRC32. They must agree.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
    }


# How often the consumer asks the broker for the topics' metadata. librdkafka's default, 5 minutes, is how long a
# command published to a partition added to the commands topic (kafka-topics --alter --partitions) would wait
# before any worker is assigned it. One metadata request every few seconds costs the broker nothing.
# ``kafka.client`` may set it otherwise.
METADATA_REFRESH_MS = 5000


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    return {
        "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        **kafka.client,
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": logs.librdkafka_logger(),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": kafka.session_timeout_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
        "on_commit": _commit_failed,
    }


def _commit_failed(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """A background offset commit's outcome (served by poll). A failed one is harmless: the offsets stay
    stored and the next commit carries them; the line says why the broker refused."""
    if error is not None and error.code() != KafkaError._NO_OFFSET:
        structlog.get_logger("oubli.worker").warning("offset_commit_failed", code=error.name(),
                                                     partitions=len(partitions or []))


def admin(kafka: KafkaSettings) -> AdminClient:
    config: dict[str, Any] = {**kafka.client, "bootstrap.servers": kafka.bootstrap_servers,
                              "logger": logs.librdkafka_logger()}
    return AdminClient(config)


def ensure_topics(kafka: KafkaSettings, *, partitions: int = COMMAND_PARTITIONS, replication: int = 1) -> list[str]:
    """Creates the commands, receipts and DLQ topics if missing; returns the names it created."""
    topics = kafka.topics
    wanted = {
        topics.commands: NewTopic(topics.commands, partitions, replication),
        topics.receipts: NewTopic(topics.receipts, partitions, replication,
                                  config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}),
        topics.dlq: NewTopic(topics.dlq, partitions, replication, config={"retention.ms": str(30 * 86400 * 1000)}),
    }
    client = admin(kafka)
    existing = set(client.list_topics(timeout=10).topics)
    missing = [topic for name, topic in wanted.items() if name not in existing]
    if not missing:
        return []
    created = []
    for name, future in client.create_topics(missing, operation_timeout=15).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    _wait_for_leaders(client, list(wanted))
    return created


def _wait_for_leaders(client: AdminClient, names: list[str], timeout: float = 30.0) -> None:
    """A created topic is usable only once every partition has a leader in the metadata."""
    deadline = time.monotonic() + timeout
    while True:
        topics = client.list_topics(timeout=10).topics
        if all(name in topics and topics[name].error is None and topics[name].partitions
               and all(p.leader >= 0 for p in topics[name].partitions.values()) for name in names):
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topics {', '.join(names)} have no leader after {timeout:.0f} s")
        time.sleep(0.1)  # start-up only, never in the consume loop


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as a signed 32-bit int."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and librdkafka's murmur2_random) picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def produce(producer: Producer, topic: str, *, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, str | bytes | None]], on_delivery: Any, timeout: float) -> None:
    """Hands one record to librdkafka, waiting while its local queue is full (at most ``timeout`` s).

    Raises ``KafkaException`` when librdkafka refuses the record at once (over ``message.max.bytes``,
    for example) or its queue stays full. The broker's answer comes later, through ``on_delivery``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            break
        except BufferError:  # the local queue is full: let deliveries drain it
            if time.monotonic() > deadline:
                raise KafkaException(f"the producer queue stayed full for {timeout:.0f} s") from None
            producer.poll(0.5)
    producer.poll(0)


# What a metadata change answers for a moment (a topic just created, a leader or coordinator moving);
# asked again shortly, the same request passes.
TRANSIENT_ERRORS = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._TRANSPORT,
})


def is_transient(exc: BaseException) -> bool:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and (error.code() in TRANSIENT_ERRORS or error.retriable())


def watermarks(consumer: Consumer, partition: TopicPartition, *, timeout: float) -> tuple[int, int]:
    """A partition's low and high watermarks, asking again through a transient error until ``timeout``."""
    for attempt in Retrying(retry=retry_if_exception(is_transient), stop=stop_after_delay(timeout),
                            wait=wait_exponential(multiplier=0.1, max=1.0), reraise=True):
        with attempt:
            marks = consumer.get_watermark_offsets(partition, timeout=timeout)
            if marks is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            low, high = marks
            return int(low), int(high)
    raise AssertionError("unreachable: Retrying re-raises")  # pragma: no cover
