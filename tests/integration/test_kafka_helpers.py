"""murmur2 partitioning must match Java's, or `oubli receipt` reads the wrong partition."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from worker import kafka
from worker.config import KafkaSettings, Topics


@pytest.mark.parametrize(("data", "expected"), [
    # Vectors from Apache Kafka's UtilsTest.testMurmur2.
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert kafka.murmur2(data) == expected


def test_partition_for_matches_what_the_producer_chose(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap,
                             topics=Topics(commands=f"{prefix}.c", receipts=f"{prefix}.r", dlq=f"{prefix}.d"))
    kafka.ensure_topics(settings)
    producer = Producer(kafka.producer_config(settings))
    chosen: dict[bytes, int] = {}
    for i in range(40):
        key = f"request-{i}-{uuid.uuid4()}".encode()
        producer.produce(settings.topics.receipts, key=key, value=b"{}",
                         on_delivery=lambda err, msg: chosen.__setitem__(msg.key(), msg.partition()))
    assert producer.flush(30) == 0
    assert len(chosen) == 40
    assert all(kafka.partition_for(key, 6) == partition for key, partition in chosen.items())
    assert len(set(chosen.values())) > 1


class _FlakyConsumer:
    """Answers ``get_watermark_offsets`` with the given errors first, then with the marks."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, _partition: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 9


def test_watermarks_ask_again_through_a_moving_leader_but_not_through_a_real_error() -> None:
    moving = _FlakyConsumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert kafka.watermarks(moving, TopicPartition("t", 0), timeout=5) == (3, 9)  # type: ignore[arg-type]
    assert moving.calls == 3
    refused = _FlakyConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        kafka.watermarks(refused, TopicPartition("t", 0), timeout=5)  # type: ignore[arg-type]
    assert refused.calls == 1
