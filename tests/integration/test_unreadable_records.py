"""A record the Kafka client cannot read (a compression bomb, a corrupt batch) is dead-lettered at its offset and
skipped, like any other bad command: the partition goes on, and a command behind it completes.

librdkafka refuses to inflate a record batch past the consumer's ``receive.message.max.bytes`` (100 MB by
default). A producer can send one a few KiB long on the wire that inflates past it: the broker takes it, and the
client then reports ``_BAD_COMPRESSION`` for that batch on every fetch, forever. Before, the worker logged a
``consumer_error`` about every 0.7 s and the partition never moved: the good command behind it was never taken
in, nothing reached the DLQ and no offset was committed. Then it stepped over the batch one record per refetch,
about 0.7 s each: a batch of thousands held its partition for hours. Now it finds the batch's end in a few
fetches (``worker.badbatch``) and dead-letters all its records at once. Here the worker's client gets a 1 MB cap,
so a 1.5 MB record is the bomb, and the shared broker inflates nothing large.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition

from devkit.pipeline import raw_settings, read_topic, run_until, settings_from, subject_command
from worker import kafka
from worker.app import Worker
from worker.store.schema import requests

CAPPED_CLIENT = {"receive.message.max.bytes": "1000000", "fetch.max.bytes": "500000", "message.max.bytes": "400000"}


# The record-by-record skip refetched the batch once per record, 0.5 to 0.7 s each: it took 152 s for this one.
BIG_BATCH, BIG_BATCH_SECONDS = 300, 60.0


def test_a_batch_the_client_cannot_decompress_is_dead_lettered_record_by_record(
    db_url: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    _dead_letters_the_batch_and_goes_on(db_url, kafka_bootstrap, tmp_path, 2)


def test_a_large_bad_batch_is_dead_lettered_at_once_after_a_few_fetches(
    db_url: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    seconds = _dead_letters_the_batch_and_goes_on(db_url, kafka_bootstrap, tmp_path, BIG_BATCH)
    assert seconds < BIG_BATCH_SECONDS, f"{BIG_BATCH} records took {seconds:.1f} s"


def _dead_letters_the_batch_and_goes_on(db_url: str, kafka_bootstrap: str, tmp_path: Path, size: int) -> float:
    """One zstd batch of ``size`` records, the bomb first and commands caught behind it, then a command in a batch
    of its own: every offset of the batch is dead-lettered once, the command behind completes, and the group's
    offset ends right after it. Returns how long the worker took to complete the command behind."""
    systems = {"alpha": {"connector": "devkit.fakes", "settings": {"url": f"sqlite:///{tmp_path / 'fx.db'}"}}}
    raw = raw_settings(store_url=db_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["kafka"]["client"] = CAPPED_CLIENT
    settings = settings_from(raw)
    topics = settings.kafka.topics
    key = f"C-{uuid.uuid4().hex[:8]}".encode()
    partition = kafka.partition_for(key, kafka.COMMAND_PARTITIONS)

    # The bomb is 1.5 MB of one byte, a few hundred bytes compressed; linger and batch size keep the commands in
    # its batch. Then, in a batch of its own, a command that must complete.
    caught, behind = [subject_command() for _ in range(size - 1)], subject_command()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "compression.type": "zstd", "linger.ms": 1000,
                         "message.max.bytes": 10_000_000, "batch.size": 10_000_000, "partitioner": "murmur2_random"})
    producer.produce(topics.commands, key=key, value=b'{"x": "' + b"a" * 1_500_000 + b'"}')
    for command in caught:
        producer.produce(topics.commands, key=key, value=json.dumps(command).encode())
    assert producer.flush(30) == 0
    producer.produce(topics.commands, key=key, value=json.dumps(behind).encode())
    assert producer.flush(30) == 0

    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    started = time.monotonic()
    try:
        def behind_completed() -> bool:
            receipt = worker.store.receipt(behind["request_id"]) if _known(worker, behind["request_id"]) else None
            return receipt is not None and receipt["status"] == "completed"

        run_until(worker, behind_completed, timeout=BIG_BATCH_SECONDS)
        seconds = time.monotonic() - started
        deadline = time.monotonic() + 20
        while len(read_topic(settings, topics.dlq)) < size and time.monotonic() < deadline:
            worker.run_once()
        worker._commit()
    finally:
        worker.close()

    dead = read_topic(settings, topics.dlq)
    sources = sorted((dict(m.headers() or [])["x-oubli-source"].decode() for m in dead),
                     key=lambda source: int(source.rsplit("/", 1)[1]))
    assert sources == [f"{topics.commands}/{partition}/{offset}" for offset in range(size)]  # once each
    assert {dict(m.headers() or [])["x-oubli-error-code"] for m in dead} == {b"too_large"}
    assert all(m.value() is None for m in dead)
    # Dead-lettered with their batch, never half-read.
    assert not [command for command in caught if _known(worker, command["request_id"])]

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.kafka.group_id})
    try:
        committed = consumer.committed([TopicPartition(topics.commands, partition)], timeout=10)[0].offset
    finally:
        consumer.close()
    assert committed == size + 1
    return seconds


def _known(worker: Worker, request_id: str) -> bool:
    with worker.engine.connect() as conn:
        return conn.execute(sa.select(requests.c.seq).where(requests.c.request_id == request_id)).first() is not None
