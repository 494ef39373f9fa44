"""What the outbox relay does with a record the broker refuses for what it is, not for how it is doing.

A *refusal* is record-specific and permanent: the same bytes are refused every time (too large for the
broker or the topic, a record it cannot accept). Sent again as it is, it would hold back every record
behind it forever, so the relay, once the record alone was refused:

- replaces a DLQ record by a **stand-in**: a small JSON record giving the original's size and sha256,
  with the DLQ's own headers (error code, error message, and ``x-oubli-source``: the original is still
  at that offset of the commands topic, until its retention). Nothing of the sender's is kept: no key,
  no value, no headers; they may hold personal data, and they may be what was too large. The stand-in
  carries ``x-oubli-dlq-reference: sha256:<hex>``.
- drops a receipt (or a stand-in refused in turn), after logging what it was: a receipt cannot be
  shrunk without lying, and it is bounded by its closed schema, so this should never happen. The store
  keeps the truth (``oubli status``), and the request's next receipt supersedes it in the compacted
  topic; waiting for the broker to change its mind would stop every other request's receipts.

Everything else (timeouts, a broker or leader away, a transaction to abort) is transient: the relay
sends the same records again, in the same order.
"""

from __future__ import annotations

import hashlib
import json

from confluent_kafka import KafkaError

from worker.deadletter.topic import ERROR_CODE, ERROR_MESSAGE, REFERENCE, SOURCE
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
    value = record.value or b""
    digest = hashlib.sha256(value).hexdigest()
    body = {
        "oubli_dlq_reference": 1,
        "kafka_error": error.name(),
        "sha256": digest,
        "size_bytes": len(value),
        "key_bytes": len(record.key or b""),
        "header_bytes": sum(len(name) + len(_bytes(v)) for name, v in record.headers),
    }
    headers: Headers = [(name, v) for name, v in record.headers if name in _KEPT]
    headers.append((REFERENCE, f"sha256:{digest}".encode()))
    return json.dumps(body, sort_keys=True).encode(), headers


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""
