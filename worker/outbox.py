"""The outbox relay: publishes receipts and DLQ records that the store committed, in order.

One relay runs at a time across all workers (a store lease), so receipts of one request reach
the compacted topic in the order they were written. A record is deleted only after the broker
acknowledged it; a crash in between republishes an identical record, which compaction absorbs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer

from worker import failpoints
from worker.store.repository import Store

log = structlog.get_logger("oubli.outbox")

LEASE = "outbox-relay"


class Relay:
    def __init__(self, store: Store, producer: Producer, *, clock: Callable[[], datetime],
                 batch: int = 500, lease_seconds: float = 15.0, crash: failpoints.Failpoints | None = None,
                 on_published: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.producer = producer
        self.clock = clock
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.crash = crash or failpoints.Failpoints(frozenset())
        self.on_published = on_published
        self.leader_until: datetime | None = None

    def tick(self) -> int:
        """Publishes one batch if this worker holds the relay lease. Returns records published."""
        now = self.clock()
        if self.leader_until is None or now >= self.leader_until - self.lease / 3:
            self.leader_until = now + self.lease if self.store.acquire_lease(LEASE, now=now, ttl=self.lease) else None
        if self.leader_until is None:
            return 0
        records = self.store.outbox_batch(self.batch)
        if not records:
            return 0
        outcomes: dict[int, KafkaError | None] = {}

        def delivered(record_id: int) -> Callable[[KafkaError | None, Message], None]:
            def callback(error: KafkaError | None, _message: Message) -> None:
                outcomes[record_id] = error
            return callback

        for record in records:
            self.producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers,
                                  on_delivery=delivered(record.id))
        remaining = self.producer.flush(30)
        self.crash.hit(failpoints.AFTER_PUBLISH)
        # Only the delivered prefix is deleted: a failed record is retried before anything after it,
        # so a later receipt of the same request can never be overtaken by an earlier one.
        done: list[int] = []
        for record in records:
            if outcomes.get(record.id, "missing") is not None:
                break
            done.append(record.id)
        self.store.outbox_delete(done)
        if len(done) < len(records):
            error: Any = outcomes.get(records[len(done)].id)
            log.warning("outbox_publish_incomplete", published=len(done), pending=len(records) - len(done),
                        unflushed=remaining, error=str(error) if error else "timeout")
        if self.on_published is not None:
            for record in records[:len(done)]:
                self.on_published(record.topic, 1)
        return len(done)

    def release(self) -> None:
        if self.leader_until is not None:
            self.store.release_lease(LEASE)
            self.leader_until = None
