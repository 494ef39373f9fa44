"""Reading the dead-letter topic for ``oubli dlq``: records, replay cursors, summary, header names.

``DlqReader`` reads by assignment up to the high watermarks captured first, so a read never hangs;
``Cursors`` are each error code's replay progress (the committed offsets of group
``<group_id>-dlq-replay.<code>``). ``DeadLetter`` keeps key and value out of its ``repr`` and never
reads the error message, which may quote the input."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from worker import kafka, logs, messages
from worker.config import KafkaSettings
from worker.core.errors import OubliError
from worker.core.timefmt import iso

ERROR_CODE = "x-oubli-error-code"
ERROR_MESSAGE = "x-oubli-error-message"
SOURCE = "x-oubli-source"
# Marks a DLQ record that stands in for a command the broker refused (``worker.refusals``).
REFERENCE = "x-oubli-dlq-reference"


def reference(value: bytes, *, key_bytes: int, header_bytes: int, kafka_error: str | None) -> tuple[bytes, bytes]:
    """A stand-in's value for a dead letter too large to keep, and its ``REFERENCE`` header: sizes and the sha256
    of the value, nothing of the sender's. ``kafka_error`` is why the broker refused it (None: never sent)."""
    digest = hashlib.sha256(value).hexdigest()
    body = {"oubli_dlq_reference": 1, "kafka_error": kafka_error, "sha256": digest, "size_bytes": len(value),
            "key_bytes": key_bytes, "header_bytes": header_bytes}
    return json.dumps(body, sort_keys=True).encode(), f"sha256:{digest}".encode()
REPLAYED_FROM = "x-oubli-replayed-from"
REPLAYED_BY = "x-oubli-replayed-by"
REPLAY_OF = "x-oubli-replay-of"  # on a reissued replay: the request_id it replaces (reissue.py)
_SOURCE_SHAPE = re.compile(r"^[A-Za-z0-9._-]{1,249}/[0-9]{1,10}/[0-9]{1,20}$")  # topic/partition/offset
# What the DLQ added (or an earlier replay did): never sent back to the commands topic.
_DROPPED = {ERROR_CODE, ERROR_MESSAGE, SOURCE, REPLAYED_FROM, REPLAYED_BY, REPLAY_OF}
CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
UNLABELLED = "unlabelled"  # a record without a well-formed error code header

Headers = list[tuple[str, str | bytes | None]]  # as the producer takes them

_OFFSET_NONE = -1001  # librdkafka's OFFSET_INVALID: the group never committed this partition


class DlqError(OubliError):
    """The DLQ could not be read to its end, or a replay's progress could not be recorded."""

    code = "dlq_error"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    code: str
    timestamp: datetime | None
    source: str | None  # where the command was consumed: topic/partition/offset
    key: bytes | None = field(repr=False)  # the subject's customer_id
    value: bytes | None = field(repr=False)  # the raw command
    headers: tuple[tuple[str, bytes | None], ...] = field(repr=False)

    def is_reference(self) -> bool:
        """A stand-in the relay wrote because the broker refused the command itself (``worker.refusals``)."""
        return any(name == REFERENCE for name, _ in self.headers)

    def replay_headers(self, topic: str, by: str) -> Headers:
        """The original headers (the signature among them), minus what the DLQ added, plus where from and who."""
        kept: Headers = [
            (k, v) for k, v in self.headers  # in any case: intake reads its own headers whatever their case
            if k.lower() not in _DROPPED and not k.lower().startswith("x-oubli-error-")]
        return [*kept, (REPLAYED_FROM, f"{topic}/{self.partition}/{self.offset}".encode()),
                (REPLAYED_BY, by.encode())]


def replay_note(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """For intake to add to the audit trail of a command a replay sent: which request, from which DLQ record, by
    whom. Only ids, an offset and an operator name (the headers ``replay_headers`` sets), cut to size.

    The audit trail outlives the subject's purge, and without a signing secret these headers are whatever the
    sender wrote. So each is kept only in the shape ``replay_headers`` gives it (a request id, a
    topic/partition/offset, a handle; none that looks like an email address or a phone number); anything else
    is named, never copied."""
    source = messages.header(headers, REPLAYED_FROM)
    if source is None:
        return None
    of = _header_text(messages.header(headers, REPLAY_OF), 128)
    if of and (not messages.could_be_request_id(of) or logs.looks_personal(of)):
        of = "an unreadable request id"
    where = _header_text(source, 300)
    if not _SOURCE_SHAPE.match(where):
        where = "an unreadable source"
    by = _header_text(messages.header(headers, REPLAYED_BY), 128).strip()
    if not by or logs.looks_personal(by):
        by = "an unnamed operator" if by else "unknown"
    return (f"replay of {of} from " if of else "replayed from ") + f"{where} by {by}"


def replay_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The request_id a reissued replay stands in for (``x-oubli-replay-of``), if it is one."""
    of = _header_text(messages.header(headers, REPLAY_OF), 128)
    return of if of and messages.could_be_request_id(of) else None


def _header_text(value: bytes | None, limit: int) -> str:
    text = (value or b"").decode("utf-8", "replace")
    return "".join(c for c in text if c.isprintable())[:limit]


def _letter(message: Message) -> DeadLetter:
    raw = message.headers() or []
    headers = tuple((str(k), v if isinstance(v, bytes | None) else str(v).encode())
                    for k, v in (raw.items() if isinstance(raw, dict) else raw))
    values = dict(headers)
    code = (values.get(ERROR_CODE) or b"").decode("ascii", "replace")
    source = values.get(SOURCE)
    kind, millis = message.timestamp()
    return DeadLetter(
        partition=message.partition() or 0, offset=message.offset() or 0,
        code=code if CODE.match(code) else UNLABELLED,
        timestamp=datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else None,
        source=source.decode("ascii", "replace") if source else None,
        key=message.key(), value=message.value(), headers=headers,
    )


class DlqReader:
    """Reads the DLQ topic by partition assignment: it joins no group and commits nothing."""

    def __init__(self, settings: KafkaSettings, *, timeout: float) -> None:
        self.topic = settings.topics.dlq
        self.timeout = timeout
        self.consumer = Consumer({
            **kafka.consumer_config(settings), "group.id": f"{settings.group_id}-dlq-reader",
            "enable.partition.eof": True,
        })

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """Low and high watermark of every partition, captured now: the end of this read."""
        # Unreachable brokers raise KafkaException (exit 4, as for oubli receipt), within the bounded wait
        # of a metadata request rather than the whole --timeout meant for reading the topic.
        metadata = self.consumer.list_topics(self.topic, timeout=min(self.timeout, kafka.METADATA_TIMEOUT)
                                             ).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise DlqError(f"topic {self.topic} is not available"
                           + (f" ({metadata.error.name()})" if metadata is not None and metadata.error else ""))
        marks = {}
        for partition in sorted(metadata.partitions):
            low, high = kafka.watermarks(self.consumer, TopicPartition(self.topic, partition), timeout=self.timeout)
            marks[partition] = (low, high)
        return marks

    def read(self, starts: Mapping[int, int], ends: Mapping[int, int], deadline: float) -> Iterator[DeadLetter]:
        """Every record from ``starts[p]`` up to, not including, ``ends[p]``, in offset order within a partition."""
        pending = {p: ends[p] for p, start in starts.items() if start < ends[p]}
        if not pending:
            return
        self.consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in pending])
        while pending:
            if time.monotonic() > deadline:
                raise DlqError(f"timed out reading {self.topic}; {len(pending)} partitions unfinished")
            message = self.consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            partition, offset = message.partition() or 0, message.offset() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.pop(partition, None)  # at the end, which is at or past the captured end
                elif error.fatal():
                    raise KafkaException(error)
                continue  # librdkafka retries transient errors by itself
            end = pending.get(partition)
            if end is None or offset >= end:
                pending.pop(partition, None)
                continue
            yield _letter(message)
            if offset >= end - 1:
                pending.pop(partition)

    def close(self) -> None:
        self.consumer.close()


class Cursors:
    """Per error code, how far replay went: the committed offsets of ``<group_id>-dlq-replay.<code>``."""

    def __init__(self, settings: KafkaSettings, marks: Mapping[int, tuple[int, int]], *, timeout: float) -> None:
        self.topic = settings.topics.dlq
        self.prefix = f"{settings.group_id}-dlq-replay."
        self.marks = marks
        self.timeout = timeout
        self.admin = kafka.admin(settings)
        self._known: dict[str, dict[int, int]] = {}

    def group(self, code: str) -> str:
        return self.prefix + code

    def of(self, code: str) -> dict[int, int]:
        """Where replay of ``code`` resumes, per partition: never below the low watermark; a cursor past the
        high watermark (the topic was recreated) starts again from the low one."""
        if code not in self._known:
            partitions = [TopicPartition(self.topic, p) for p in self.marks]
            request = ConsumerGroupTopicPartitions(self.group(code), partitions)
            result = self._result(self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout))
            committed = {tp.partition: tp.offset for tp in result.topic_partitions}
            self._known[code] = {
                p: low if committed.get(p, _OFFSET_NONE) < low or committed[p] > high else committed[p]
                for p, (low, high) in self.marks.items()
            }
        return self._known[code]

    def advance(self, code: str, ends: Mapping[int, int]) -> None:
        offsets = [TopicPartition(self.topic, p, max(end, self.of(code)[p])) for p, end in ends.items()]
        request = ConsumerGroupTopicPartitions(self.group(code), offsets)
        self._result(self.admin.alter_consumer_group_offsets([request], request_timeout=self.timeout))
        self._known[code] = {tp.partition: tp.offset for tp in offsets}

    def _result(self, futures: Mapping[str, Any]) -> Any:
        (future,) = futures.values()
        try:
            result = future.result(timeout=self.timeout)
        except KafkaException as exc:
            raise DlqError(f"replay cursor: {exc.args[0].name() if exc.args else exc}") from None
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if failed:
            raise DlqError(f"replay cursor of partition {failed[0].partition}: {failed[0].error.name()}")
        return result


# -- summary -------------------------------------------------------------------------------------------------------

@dataclass
class CodeSummary:
    code: str
    count: int = 0
    unreplayed: int = 0  # at or past the code's replay cursor
    first: tuple[datetime | None, str | None] = (None, None)  # record time, and where the command was consumed
    last: tuple[datetime | None, str | None] = (None, None)

    def add(self, letter: DeadLetter, *, replayed: bool) -> None:
        self.count += 1
        self.unreplayed += 0 if replayed else 1
        at, first, last = letter.timestamp, self.first[0], self.last[0]
        if self.count == 1 or (at is not None and (first is None or at < first)):
            self.first = (at, letter.source)
        if self.count == 1 or (at is not None and (last is None or at >= last)):
            self.last = (at, letter.source)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "count": self.count, "unreplayed": self.unreplayed,
                "first_at": iso(self.first[0]), "first_source": self.first[1],
                "last_at": iso(self.last[0]), "last_source": self.last[1]}


def summarize(settings: KafkaSettings, *, timeout: float) -> tuple[int, list[CodeSummary]]:
    """Partition count, and per error code over the whole DLQ: count, not yet replayed, first and last record."""
    reader = DlqReader(settings, timeout=timeout)
    try:
        marks = reader.watermarks()
        cursors = Cursors(settings, marks, timeout=timeout)
        by_code: dict[str, CodeSummary] = {}
        ends = {p: high for p, (_, high) in marks.items()}
        for letter in reader.read({p: low for p, (low, _) in marks.items()}, ends, time.monotonic() + timeout):
            summary = by_code.setdefault(letter.code, CodeSummary(letter.code))
            summary.add(letter, replayed=letter.offset < cursors.of(letter.code)[letter.partition])
        return len(marks), sorted(by_code.values(), key=lambda c: (-c.count, c.code))
    finally:
        reader.close()
