"""The outbox relay: publishes the receipts and DLQ records the store committed, in order.

One relay leads at a time across all workers (a store lease); each batch is one Kafka transaction,
and rows are deleted only after it committed, so a crash in between republishes identical records.
An acknowledged batch is committed before the store is asked anything: a store outage never holds
read_committed readers behind an open transaction.
``init_transactions`` fences every older leader, so no stale batch lands after a newer one (the
argument: docs/architecture.md). Readers must use ``read_committed``. ``tick`` never blocks the loop
for long; refused records are handled by ``worker.refusals``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from worker import failpoints, kafka, refusals
from worker.config import KafkaSettings
from worker.store.outbox import Held, OutboxRecord
from worker.store.repository import Store

log = structlog.get_logger("oubli.outbox")

LEASE = "outbox-relay"
BROKER_BACKOFF = 1.0  # seconds between two tries of a blocking call that timed out
COMMIT_RECHECK = 0.01  # seconds before asking again for a transaction commit still under way


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The worker's producer settings, plus the one ``transactional.id`` every relay of the fleet shares."""
    # No linger: a batch is one transaction whose records are all produced at once, and a lone receipt
    # should not wait 5 ms for company that will not come (what is queued meanwhile is batched anyway).
    return {**kafka.producer_config(settings), "transactional.id": f"{settings.group_id}.outbox-relay",
            "linger.ms": 0}


@dataclass
class _Batch:
    records: list[OutboxRecord]
    outcomes: dict[int, KafkaError | None] = field(default_factory=dict)

    def settled(self) -> bool:
        return len(self.outcomes) == len(self.records)

    def failures(self) -> list[tuple[OutboxRecord, KafkaError]]:
        return [(r, e) for r in self.records if (e := self.outcomes.get(r.id)) is not None]


class Relay:
    def __init__(self, store: Store, config: Mapping[str, Any], *, clock: Callable[[], datetime],
                 batch: int = 500, lease_seconds: float = 15.0, broker_timeout: float = 0.2,
                 crash: failpoints.Failpoints | None = None,
                 on_published: Callable[[str, int], None] | None = None,
                 producer_factory: Callable[[dict[str, Any]], Producer] = Producer) -> None:
        self.store = store
        self.config = dict(config)
        self.clock = clock
        self.batch_size = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.broker_timeout = broker_timeout
        self.crash = crash or failpoints.Failpoints(frozenset())
        self.on_published = on_published
        self.producer_factory = producer_factory
        self.producer: Producer | None = None
        self.initialized = False  # the producer's init_transactions returned
        self.in_transaction = False  # begun and neither committed nor aborted yet
        self.held: Held | None = None  # the lease, while this relay leads
        self.leader_until = datetime.min.replace(tzinfo=UTC)
        self.next_attempt = datetime.min.replace(tzinfo=UTC)
        self.ready = False  # init_transactions done, and the lease checked after it
        self.in_flight: _Batch | None = None
        self.committed: _Batch | None = None  # published, its rows not deleted yet (the store was out)
        self.alone: int | None = None  # a record a batch got refused: sent by itself next
        self.broker_quiet_until = 0.0  # monotonic: no blocking call before, after one timed out

    def tick(self) -> int:
        """Ends a settled batch's transaction, or sends the next batch if this worker leads.

        Returns the number of records confirmed published by this call.
        """
        if self.producer is not None:
            self.producer.poll(0)
        # Kafka first: a batch the broker acknowledged is committed before the store is asked anything (the
        # lease), so read_committed readers of the receipts topic do not wait for a store that went away.
        self._commit()
        now = self.clock()
        self._keep_lease(now)
        if self.held is None or time.monotonic() < self.broker_quiet_until:
            return 0
        if not self.ready and not self._start(now):
            return 0
        if self.in_flight is not None:
            if not self.in_flight.settled():
                return 0
            self._end()
            if self.in_flight is not None or not self.ready:  # a commit still under way, or the relay started over
                return 0
        published = 0
        # Committed by now (here, or by an earlier tick while the store was out): its rows go before the next batch.
        if self.committed is not None:
            published = self._forget(self.committed)
            if not self.ready:  # the lease was lost meanwhile: the next leader publishes the rows again
                return published
        # The next batch at once, not on the next turn: the loop idles for its poll timeout when nothing is in
        # flight, and a receipt written meanwhile (a request that finished) would wait that long.
        records = self.store.outbox.batch(self.batch_size)
        if records:
            self._send(self._plan(records))
        return published

    def pending(self) -> bool:
        return self.in_flight is not None

    def wait(self, timeout: float) -> bool:
        """Blocks until the broker answered for every record of the batch in flight (the next ``tick`` commits it)
        or ``timeout`` passes. False, at once, for a batch already answered for: its commit is held back (still
        under way at the broker, or after a call that timed out), and waiting here would not end sooner."""
        batch = self.in_flight
        if batch is None or self.producer is None or batch.settled():
            return False
        deadline = time.monotonic() + timeout
        while not batch.settled():
            left = deadline - time.monotonic()
            if left <= 0 or self.producer is None:
                return False
            self.producer.poll(left)
        return True

    # --- leadership ----------------------------------------------------------------------------

    def _keep_lease(self, now: datetime) -> None:
        if self.held is not None:
            # The leader renews every lease/3; a follower asks again only as often.
            if now >= self.leader_until - self.lease / 3:
                if self.store.outbox.renew_lease(self.held, now=now, ttl=self.lease):
                    self.leader_until = now + self.lease
                else:
                    log.warning("outbox_lease_lost")
                    self._step_down()
            return
        if now < self.next_attempt:
            return
        self.next_attempt = now + self.lease / 3
        held = Held(LEASE, uuid.uuid4().hex)
        if self.store.outbox.acquire_lease(LEASE, now=now, ttl=self.lease, token=held.token):
            self.held, self.leader_until, self.ready = held, now + self.lease, False

    def _start(self, now: datetime) -> bool:
        """Fences every earlier relay (``init_transactions``), then checks the lease is still ours."""
        assert self.held is not None
        if self.producer is None:
            self.producer, self.initialized = self.producer_factory(dict(self.config)), False
        if not self.initialized:
            try:
                self.producer.init_transactions(self.broker_timeout)
            except KafkaException as exc:
                # A timeout goes on in the background: calling again later picks it up.
                self._failed_call(exc.args[0], "outbox_relay_not_started")
                return False
            self.initialized = True
        if not self.store.outbox.renew_lease(self.held, now=now, ttl=self.lease):
            log.warning("outbox_lease_lost")
            self._step_down()
            return False
        self.leader_until, self.ready = now + self.lease, True
        return True

    def _failed_call(self, error: KafkaError, event: str, *, backoff: float = BROKER_BACKOFF) -> None:
        """A blocking transactional call failed: call it again later, or start over with a new producer."""
        if error.retriable():
            self.broker_quiet_until = time.monotonic() + backoff
            log.debug(event, code=error.name())
            return
        # Fatal: fenced (a newer relay started: this producer's open transaction is aborted), or broken.
        log.warning(event, code=error.name(), fatal=error.fatal())
        self._drop_producer()

    def _step_down(self) -> None:
        # A batch committed but not deleted stays in the outbox: the next leader publishes it again, and compaction
        # absorbs the copy (as after a crash between the commit and the delete).
        self.held, self.ready, self.in_flight, self.alone, self.committed = None, False, None, None, None
        self._drop_producer()

    def _drop_producer(self) -> None:
        self.ready, self.in_flight = False, None
        producer, self.producer = self.producer, None
        if producer is None:
            return
        if self.in_transaction:
            self.in_transaction = False
            # Ended before the producer goes: librdkafka 2.16 aborts the whole process (an assertion in
            # rd_kafka_txn_handle_AddPartitionsToTxn) when a producer is destroyed just as it registers its
            # transaction's partitions, and no registration starts once an abort began. A fenced producer
            # refuses at once; a timeout leaves the abort to the next init_transactions of this fleet (this
            # relay's own next producer, or the next leader's), else to the broker's transaction timeout.
            try:
                producer.abort_transaction(self.broker_timeout)
            except KafkaException as exc:
                log.debug("outbox_abort_on_drop_failed", code=exc.args[0].name())
        producer.purge()

    # --- sending ---------------------------------------------------------------------------------

    def _plan(self, records: list[OutboxRecord]) -> list[OutboxRecord]:
        """The batch to send: everything, or up to a record a batch got refused, which goes alone."""
        if self.alone is None:
            return records
        position = next((i for i, r in enumerate(records) if r.id == self.alone), None)
        if position is None:  # published or dropped meanwhile
            self.alone = None
            return records
        return records[:position] if position else records[:1]

    def _send(self, records: list[OutboxRecord]) -> None:
        assert self.producer is not None
        batch = _Batch([])

        def delivered(record_id: int) -> Callable[[KafkaError | None, Message], None]:
            def callback(error: KafkaError | None, _message: Message) -> None:
                batch.outcomes[record_id] = error
            return callback

        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            # A fatal error (fenced by a newer relay) shows on the producer's next call, which may be this one:
            # raised from here it would stop the worker, where every other relay call starts over instead.
            self._failed_call(exc.args[0], "outbox_relay_not_started")
            return
        self.in_transaction = True
        try:
            for record in records:
                try:
                    self.producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers,
                                          on_delivery=delivered(record.id))
                except BufferError:  # librdkafka's queue is full: this batch ends here
                    break
                except KafkaException as exc:
                    # librdkafka refused the record itself (over its own message.max.bytes, say). The
                    # broker never saw it, so it needs no batch of its own to be known refused.
                    error = exc.args[0]
                    if not batch.records and refusals.is_refusal(error):
                        self._refused(record, error)
                    else:
                        log.warning("outbox_produce_failed", code=error.name())
                    break
                batch.records.append(record)
        except BaseException:
            # Whatever broke the send (the store, replacing a refused record) left this transaction open, and
            # every later begin_transaction would refuse (_STATE): the relay would never publish again. A new
            # producer starts over; its init_transactions aborts what this one had sent.
            self._drop_producer()
            raise
        if self.producer is None:  # the lease was lost while dropping a refused record
            return
        self.in_flight = batch
        self.producer.poll(0)

    def _commit(self) -> None:
        """Commits the batch in flight once every record of it was acknowledged. Kafka only, never the store.

        Safe without the lease: the broker refuses the commit of a relay fenced by a newer leader's
        ``init_transactions`` (docs/architecture.md, fencing), and a batch committed by a relay that has lost its
        lease since is published again by the next leader, identical, which compaction absorbs."""
        batch, producer = self.in_flight, self.producer
        if (batch is None or producer is None or not batch.settled() or batch.failures()
                or time.monotonic() < self.broker_quiet_until):
            return
        try:
            producer.commit_transaction(self.broker_timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.retriable() and not error.txn_requires_abort():
                # The commit goes on in the background: the same call on a later tick picks its answer up,
                # so this waits only a loop turn or two, not the backoff of a call that failed.
                self._failed_call(error, "outbox_commit_pending", backoff=COMMIT_RECHECK)
            else:  # fenced (a newer relay started), or the transaction must be aborted: start over
                log.warning("outbox_commit_failed", code=error.name(), fatal=error.fatal())
                self._drop_producer()
            return
        self.in_flight, self.committed, self.in_transaction = None, batch, False
        self.crash.hit(failpoints.AFTER_PUBLISH)

    def _end(self) -> None:
        """Ends a settled batch: committed (``_commit``), or given up when one of its records failed."""
        batch = self.in_flight
        assert batch is not None and self.producer is not None
        failures = batch.failures()
        if not failures:
            self._commit()
            return
        # Start over with a new producer: its init_transactions aborts this transaction, and resets
        # the sequence numbers a refused record leaves behind (with them, the same producer's next
        # records to that partition can hang until they time out).
        self._drop_producer()
        self._after_failure(batch, failures)

    def _forget(self, batch: _Batch) -> int:
        """Deletes a committed batch's rows (the store must be back for that). Returns the records published."""
        if not self._delete([r.id for r in batch.records]):
            return 0
        self.committed = None
        if self.alone is not None and any(r.id == self.alone for r in batch.records):
            self.alone = None
        if self.on_published is not None:
            for record in batch.records:
                self.on_published(record.topic, 1)
        return len(batch.records)

    def _after_failure(self, batch: _Batch, failures: list[tuple[OutboxRecord, KafkaError]]) -> None:
        refused = next(((r, e) for r, e in failures if refusals.is_refusal(e)), None)
        if refused is None:
            log.warning("outbox_publish_incomplete", pending=len(batch.records), error=failures[0][1].name())
        elif len(batch.records) > 1:
            # The whole batch of a partition shares one answer: find out whether this record is the cause.
            self.alone = refused[0].id
            log.info("outbox_record_isolated", topic=refused[0].topic, code=refused[1].name())
        else:
            self._refused(*refused)

    def _refused(self, record: OutboxRecord, error: KafkaError) -> None:
        self.alone = None
        size = len(record.value or b"")
        if record.topic == self.store.topics.dlq and not refusals.is_stand_in(record):
            value, headers = refusals.stand_in(record, error)
            self.store.outbox.replace(record.id, key=None, value=value, headers=headers)
            log.warning("dlq_record_replaced_by_reference", code=error.name(), size=size,
                        source=_header(record, "x-oubli-source"))
            return
        # Never the key of a DLQ record (a customer id); a receipt's key is its request_id.
        receipt = record.topic == self.store.topics.receipts
        request_id = (record.key or b"").decode(errors="replace") if receipt else None
        log.error("outbox_record_dropped", topic=record.topic, code=error.name(), size=size, request_id=request_id,
                  status=_header(record, "x-oubli-status"), source=_header(record, "x-oubli-source"))
        self._delete([record.id])

    def _delete(self, ids: list[int]) -> bool:
        assert self.held is not None
        if self.store.outbox.delete(ids, held=self.held):
            return True
        log.warning("outbox_lease_lost")
        self._step_down()
        return False

    # --- shutdown --------------------------------------------------------------------------------

    def drain(self, timeout: float) -> None:
        """On shutdown: waits (bounded) for the batch in flight and commits it, so it is not sent twice."""
        if self.in_flight is not None and self.producer is not None:
            self.producer.flush(timeout)
            if self.in_flight is not None and self.in_flight.settled():
                self._end()
        if self.committed is not None and self.held is not None:
            self._forget(self.committed)

    def release(self) -> None:
        """Aborts an unfinished transaction (bounded) and hands the lease back."""
        self._drop_producer()
        if self.held is not None:
            self.store.outbox.release_lease(LEASE, token=self.held.token)
            self.held = None


def _header(record: OutboxRecord, name: str) -> str | None:
    value = next((v for k, v in record.headers if k == name), None)
    return value.decode(errors="replace")[:300] if isinstance(value, bytes) else value
