"""The relay ends a producer's open transaction before it lets the producer go.

librdkafka 2.16 aborts the whole process (an assertion in ``rd_kafka_txn_handle_AddPartitionsToTxn``) when a
transactional producer is destroyed just as it registers its transaction's partitions. A relay that lost its lease
mid-batch did exactly that, about one time in sixty in ``test_a_stalled_relay_cannot_publish_its_old_batch_after_a_
newer_leader`` on real Kafka. Once an abort began, librdkafka registers nothing more, so the abort comes first.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from devkit.membroker import MemBroker, MemProducer
from devkit.pipeline import raw_settings, record
from worker import config, states
from worker.core.timefmt import utcnow
from worker.outbox import Relay, producer_config
from worker.store import db
from worker.store.repository import Store


class UnackedProducer(MemProducer):
    """A broker that has not acknowledged the batch yet: no delivery report until ``ack``. Records its calls."""

    def __init__(self, broker: MemBroker, config: dict[str, Any]) -> None:
        super().__init__(broker, config)
        self.calls: list[str] = []
        self.acked = False

    def poll(self, timeout: float = 0) -> int:
        return super().poll(timeout) if self.acked else 0

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")
        super().begin_transaction()

    def abort_transaction(self, timeout: float = -1) -> None:
        self.calls.append("abort_transaction")
        super().abort_transaction(timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        self.calls.append("commit_transaction")
        super().commit_transaction(timeout)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.calls.append("purge")
        super().purge(in_queue, in_flight, blocking)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> Any:
        return self.now


def _relays(tmp_path: Path) -> tuple[Relay, Relay, Store, Clock, list[UnackedProducer]]:
    settings = config.build(raw_settings(store_url=f"sqlite:///{tmp_path / 'store.db'}", bootstrap="127.0.0.1:1",
                                         systems={}), env={})
    engine = db.create_engine(settings.store_url)
    db.migrate(engine)
    stores = [Store(engine, topics=settings.kafka.topics, policy=states.RetryPolicy(), actor=f"w{i}") for i in (1, 2)]
    broker, made, clock = MemBroker(3), [], Clock()

    def factory(config: dict[str, Any]) -> Any:  # stands in for confluent_kafka.Producer
        made.append(UnackedProducer(broker, config))
        return made[-1]

    producer_settings = producer_config(settings.kafka)
    first, second = (Relay(store, producer_settings, clock=clock, producer_factory=factory) for store in stores)
    return first, second, stores[0], clock, made


def test_a_relay_that_loses_its_lease_mid_batch_aborts_the_open_transaction_before_dropping_the_producer(
        tmp_path: Path) -> None:
    stale, newer, store, clock, made = _relays(tmp_path)
    record(store, {"alpha": 3}, now=clock.now, customer_id="C-drop-1")
    stale.tick()
    assert stale.pending()  # a batch in flight, not acknowledged yet: its transaction is open
    clock.now += timedelta(seconds=20)  # the stale relay's lease runs out; another relay takes it
    newer.tick()
    assert newer.held is not None
    stale.tick()  # renewing fails: it steps down

    assert stale.producer is None and not stale.pending()
    assert made[0].calls == ["begin_transaction", "abort_transaction", "purge"]


def test_a_relay_drops_a_producer_with_no_open_transaction_without_aborting(tmp_path: Path) -> None:
    stale, newer, store, clock, made = _relays(tmp_path)
    record(store, {"alpha": 3}, now=clock.now, customer_id="C-drop-2")
    stale.tick()
    made[0].acked = True
    stale.tick()  # acknowledged and committed
    assert "commit_transaction" in made[0].calls and not stale.pending()
    clock.now += timedelta(seconds=20)
    newer.tick()
    stale.tick()

    assert stale.producer is None
    assert "abort_transaction" not in made[0].calls and made[0].calls[-1] == "purge"
