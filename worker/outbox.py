"""The outbox relay: publishes receipts and DLQ records that the store committed, in order.

One relay runs at a time across all workers (a store lease), so receipts of one request reach
the compacted topic in the order they were written. A record is deleted only after the broker
acknowledged it; a crash in between republishes an identical record, which compaction absorbs.

The relay never blocks the main loop on the broker: ``tick`` hands a batch to the producer and
returns; a later tick collects the delivery reports. During a broker outage the batch simply stays
in flight (librdkafka retries it) and the outbox rows stay in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from confluent_kafka import KafkaError, Message, Producer

from worker import failpoints
from worker.store.outbox import OutboxRecord
from worker.store.repository import Store

log = structlog.get_logger("oubli.outbox")

LEASE = "outbox-relay"


@dataclass
class _Batch:
    records: list[OutboxRecord]
    outcomes: dict[int, KafkaError | None] = field(default_factory=dict)

    def settled(self) -> bool:
        return len(self.outcomes) == len(self.records)

    def delivered_prefix(self) -> list[int]:
        # Only the delivered prefix counts: a failed record is retried before anything after it,
        # so a later receipt of the same request can never be overtaken by an earlier one.
        done: list[int] = []
        for record in self.records:
            if record.id not in self.outcomes or self.outcomes[record.id] is not None:
                break
            done.append(record.id)
        return done


class Relay:
    def __init__(self, store: Store, producer: Producer, *, clock: Callable[[], datetime],
                 batch: int = 500, lease_seconds: float = 15.0, crash: failpoints.Failpoints | None = None,
                 on_published: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.producer = producer
        self.clock = clock
        self.batch_size = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.crash = crash or failpoints.Failpoints(frozenset())
        self.on_published = on_published
        self.leader_until: datetime | None = None
        self.next_attempt = datetime.min.replace(tzinfo=UTC)
        self.in_flight: _Batch | None = None

    def tick(self) -> int:
        """Collects a settled batch, or sends the next one if this worker holds the relay lease.

        Returns the number of records confirmed published by this call.
        """
        self.producer.poll(0)
        now = self.clock()
        renew = self.leader_until is not None and now >= self.leader_until - self.lease / 3
        # A follower asks again only now and then: the leader renews every lease/3.
        if renew or (self.leader_until is None and now >= self.next_attempt):
            held = self.store.outbox.acquire_lease(LEASE, now=now, ttl=self.lease)
            self.leader_until = now + self.lease if held else None
            self.next_attempt = now + self.lease / 3
        if self.in_flight is not None:
            return self._collect() if self.in_flight.settled() else 0
        if self.leader_until is None:
            return 0
        records = self.store.outbox.batch(self.batch_size)
        if records:
            self._send(records)
        return 0

    def pending(self) -> bool:
        return self.in_flight is not None

    def _send(self, records: list[OutboxRecord]) -> None:
        batch = _Batch(records)

        def delivered(record_id: int) -> Callable[[KafkaError | None, Message], None]:
            def callback(error: KafkaError | None, _message: Message) -> None:
                batch.outcomes[record_id] = error
            return callback

        for record in records:
            self.producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers,
                                  on_delivery=delivered(record.id))
        self.in_flight = batch
        self.producer.poll(0)

    def _collect(self) -> int:
        batch, self.in_flight = self.in_flight, None
        assert batch is not None
        self.crash.hit(failpoints.AFTER_PUBLISH)
        done = batch.delivered_prefix()
        self.store.outbox.delete(done)
        if len(done) < len(batch.records):
            error = batch.outcomes.get(batch.records[len(done)].id)
            log.warning("outbox_publish_incomplete", published=len(done), pending=len(batch.records) - len(done),
                        error=error.name() if error else "unknown")
        if self.on_published is not None:
            for record in batch.records[:len(done)]:
                self.on_published(record.topic, 1)
        return len(done)

    def drain(self, timeout: float) -> None:
        """On shutdown: waits (bounded) for the batch in flight, so its rows are not sent twice."""
        if self.in_flight is not None:
            self.producer.flush(timeout)
            if self.in_flight.settled():
                self._collect()

    def release(self) -> None:
        if self.leader_until is not None:
            self.store.outbox.release_lease(LEASE)
            self.leader_until = None
