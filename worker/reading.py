"""What the loop takes from the consumer: its readable records, and dead letters for the batches it cannot read.

The loop polls and records; this keeps, per partition, where the consumer fetches from (``positions``) and the
unreadable batch being measured there (``worker.badbatch``). While a partition has one, its readable records are
dropped (they are fetched again from the batch's end) and its offset stays put.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker import badbatch
from worker.broker import Consumer, Record

log = structlog.get_logger("oubli.worker")

# Consumer errors that name a record batch the client cannot read, however often it fetches it again: librdkafka
# retries the same fetch forever, so the partition would stall behind it. Every record of such a batch is
# dead-lettered at its offset and skipped like any other bad command.
UNREADABLE = frozenset({KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG})
WATERMARK_TIMEOUT_SECONDS = 5.0

Place = tuple[str, int]  # (topic, partition)


class Unreadable:
    """A ``Record`` in place of one the client could not read: only its place, no key, value or headers."""

    def __init__(self, topic: str, partition: int, offset: int, code: str) -> None:
        self._topic, self._partition, self._offset, self.code = topic, partition, offset, code

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> None:
        return None

    def value(self) -> None:
        return None

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class Reader:
    def __init__(self, consumer: Consumer, *, chunk: int) -> None:
        self.consumer = consumer
        self.chunk = chunk  # dead letters handed to intake per turn
        # The next offset this consumer fetches in each partition, as far as the loop knows: after the last record
        # it was handed, or where it last seeked. Places an unreadable batch (``_bad_batch``).
        self.positions: dict[Place, int] = {}
        self.bad_batches: dict[Place, badbatch.BadBatch] = {}

    def take(self, batch: Iterable[Record], *, held: bool) -> list[Record]:
        """The records of ``batch`` to record, then the next dead letters of each bad batch whose end is known.
        ``held``: intake is paused, so no probe can be answered and nothing may be recorded."""
        records: list[Record] = []
        for message in batch:
            self._take(message, records)
        return records + self._probe(held=held)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.consumer.seek(TopicPartition(topic, partition, offset))
        self.positions[(topic, partition)] = offset

    def rewound(self, place: Place) -> None:
        """Intake rewound the partition: a bad batch there is measured again from the rewound position, since a
        probe's answer could now pass a record before the batch that is not recorded yet."""
        self.bad_batches.pop(place, None)

    def revoked(self, place: Place) -> None:
        """The next owner starts from the committed offset, and measures a bad batch again: the DLQ keeps no row
        twice."""
        self.positions.pop(place, None)
        self.bad_batches.pop(place, None)

    def dead_lettered(self, place: Place, upto: int) -> None:
        """The dead letters of a partition's bad batch before ``upto`` are recorded; after its last, the consumer
        fetches on past the batch, or the client would report it forever."""
        bad = self.bad_batches.get(place)
        if bad is None:
            return
        bad = self.bad_batches[place] = badbatch.recorded(bad, upto)
        if bad.finished and bad.boundary is not None:
            del self.bad_batches[place]
            self.seek(*place, bad.boundary)
            log.warning("unreadable_batch_skipped", source=f"{place[0]}/{place[1]}/{bad.base}",
                        next_offset=bad.boundary, probes=bad.probes)

    def _take(self, message: Record, records: list[Record]) -> None:
        """Adds a consumed record to ``records``, or hands it to its partition's bad batch (an answer to a probe,
        or a refetch: nothing of that partition is recorded before the batch's end), or starts one."""
        error = message.error()
        place = (str(message.topic()), message.partition() or 0)
        bad = self.bad_batches.get(place)
        if error is None:
            if bad is not None:
                self.bad_batches[place] = badbatch.observe(bad, message.offset() or 0, error_base=None)
            else:
                records.append(message)
                self.positions[place] = (message.offset() or 0) + 1
        elif error.fatal():
            raise KafkaException(error)
        elif error.code() in UNREADABLE and message.partition() is not None and (message.offset() or 0) >= 0:
            if bad is not None:
                self.bad_batches[place] = badbatch.observe(bad, message.offset() or 0, error_base=message.offset())
            else:
                self._bad_batch(place, message.offset() or 0, error)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer_error", code=error.name(), retriable=error.retriable())

    def _bad_batch(self, place: Place, base: int, error: KafkaError) -> None:
        """Starts measuring the unreadable batch at ``base``. librdkafka reports the *base* offset of the record
        batch it could not decompress, and reports it again after a seek into that batch, so its first record
        not yet dead-lettered is the later of that offset and where this consumer fetches from (which the loop
        knows, or the group's committed offset after an assignment or a restart): one DLQ row per offset of the
        batch, none twice."""
        topic, partition = place
        position = self.positions.get(place)
        if position is None:
            try:
                committed = self.consumer.committed([TopicPartition(topic, partition)], timeout=10)
                position = committed[0].offset if committed and committed[0].offset >= 0 else None
            except KafkaException:
                position = None
        try:
            # Read now, after the report: the whole batch lies below it. Offsets at or past it need no fetch.
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                          timeout=WATERMARK_TIMEOUT_SECONDS) or (None, None)
        except KafkaException:
            high = None  # probes past the log's end then time out: slower, as right
        bad = badbatch.start(base, position, high, error.name())
        self.bad_batches[place] = bad
        log.warning("record_unreadable", source=f"{topic}/{partition}/{bad.first}", code=error.name())

    def _probe(self, *, held: bool) -> list[Record]:
        """Sends each partition's next probe, or, once its batch's end is known, the next chunk of its dead
        letters (``dead_lettered`` seeks past the batch when the last is recorded)."""
        now = time.monotonic()
        dead: list[Record] = []
        for place, bad in list(self.bad_batches.items()):
            if held:
                self.bad_batches[place] = badbatch.waiting(bad, now)
                continue
            bad = badbatch.expired(bad, now)
            probe = badbatch.next_probe(bad)
            if probe is not None:
                self.seek(*place, probe)
                bad = badbatch.asked(bad, probe, now)
            self.bad_batches[place] = bad
            dead += [Unreadable(*place, offset, bad.code) for offset in badbatch.dead_letters(bad, self.chunk)]
        return dead
