"""What support and the CLI do with Kafka: publish a command, read one request's latest receipt."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker import kafka, messages
from worker.config import KafkaSettings
from worker.timefmt import iso, utcnow


def build_command(
    *, kind: str, customer_id: str, emails: Sequence[str] = (), phones: Sequence[str] = (),
    identifiers: Mapping[str, Sequence[str]] | None = None, systems: Sequence[str] | None = None,
    requested_by: str = "oubli-cli", reason: str | None = None, request_id: str | None = None,
    requested_at: datetime | None = None, due_at: datetime | None = None,
) -> dict[str, Any]:
    subject: dict[str, Any] = {"customer_id": customer_id}
    if emails:
        subject["emails"] = list(emails)
    if phones:
        subject["phones"] = list(phones)
    if identifiers:
        subject["identifiers"] = {k: list(v) for k, v in identifiers.items()}
    return {
        "schema_version": 1,
        "request_id": request_id or str(uuid.uuid4()),
        "kind": kind,
        "subject": subject,
        "requested_at": iso(requested_at or utcnow()),
        "requested_by": requested_by,
        "due_at": iso(due_at) if due_at else None,
        "systems": list(systems) if systems else None,
        "reason": reason,
    }


def publish_command(settings: KafkaSettings, command: Mapping[str, Any], *, signing_secret: bytes | None = None,
                    raw: bytes | None = None, key: bytes | None = None) -> None:
    """Publishes a command keyed by customer_id (per-subject order), signed when a secret is given."""
    value = raw if raw is not None else json.dumps(command).encode("utf-8")
    if key is None:
        key = str(command.get("subject", {}).get("customer_id", "")).encode() or None
    headers: list[tuple[str, str | bytes | None]] = []
    if signing_secret:
        headers.append((messages.SIGNATURE_HEADER, messages.sign(value, signing_secret).encode()))
    producer = Producer(kafka.producer_config(settings))
    errors: list[Any] = []
    producer.produce(settings.topics.commands, key=key, value=value, headers=headers,
                     on_delivery=lambda err, _msg: errors.append(err) if err else None)
    if producer.flush(30) or errors:
        raise KafkaException(errors[0] if errors else "the command was not acknowledged within 30 s")


def read_receipt(settings: KafkaSettings, request_id: str, *, timeout: float = 10.0) -> dict[str, Any] | None:
    """The latest receipt of one request, reading only the partition its key hashes to."""
    topic = settings.topics.receipts
    key = request_id.encode()
    consumer = Consumer({
        **kafka.consumer_config(settings), "group.id": f"oubli-receipt-{uuid.uuid4()}",
        "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"topic {topic} is not available")
        partition = kafka.partition_for(key, len(metadata.partitions))
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, partition, low)])
        latest: bytes | None = None
        found = False
        while True:
            message = consumer.poll(timeout)
            if message is None:
                raise KafkaException(f"timed out reading {topic}/{partition}")
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise KafkaException(error)
            if message.key() == key:
                latest, found = message.value(), True
            if (message.offset() or 0) >= high - 1:
                break
        if not found or latest is None:  # never seen, or a tombstone
            return None
        receipt: dict[str, Any] = json.loads(latest)
        return receipt
    finally:
        consumer.close()
