"""What the outbox relay does with a record the broker refuses for what it is (too large, invalid):
the same bytes are refused every time, so sent again they would hold back every record behind them.

A DLQ record is replaced by a small stand-in (size, sha256, the DLQ's own headers, nothing of the
sender's); a receipt is dropped after logging what it was (the store keeps the truth). Everything else
is transient: the relay sends the same records again, in order."""

from __future__ import annotations

from confluent_kafka import KafkaError

from worker.deadletter.topic import ERROR_CODE, ERROR_MESSAGE, REFERENCE, SOURCE, reference
from worker.store.outbox import Headers, OutboxRecord

REFUSALS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,  # over the broker's message.max.bytes or the topic's max.message.bytes,
    KafkaError.RECORD_LIST_TOO_LARGE,  # or librdkafka's own message.max.bytes (raised by produce())
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,  # e.g. refused by the topic's policy
    KafkaError._INVALID_ARG,  # librdkafka cannot even queue it
})

_KEPT = frozenset({ERROR_CODE, ERROR_MESSAGE, SOURCE})


def is_refusal(error: KafkaError | None) -> bool:
    return error is not None and error.code() in REFUSALS


def is_stand_in(record: OutboxRecord) -> bool:
    return any(name == REFERENCE for name, _ in record.headers)


def stand_in(record: OutboxRecord, error: KafkaError) -> tuple[bytes, Headers]:
    """The stand-in's value and headers for a refused DLQ record."""
    value, pointer = reference(record.value or b"", key_bytes=len(record.key or b""),
                               header_bytes=sum(len(name) + len(_bytes(v)) for name, v in record.headers),
                               kafka_error=error.name())
    headers: Headers = [(name, v) for name, v in record.headers if name in _KEPT]
    headers.append((REFERENCE, pointer))
    return value, headers


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""
