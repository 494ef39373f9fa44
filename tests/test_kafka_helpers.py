"""murmur2 partitioning must match Java's, or `oubli receipt` reads the wrong partition."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

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
