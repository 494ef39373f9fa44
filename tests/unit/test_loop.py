"""The loop on SQLite and the in-memory broker (devkit.membroker), in milliseconds: dedupe, the DLQ, a store
outage (pause, rewind to the first unrecorded command, resume), commit on revoke, and drain on close."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException

from devkit import fakes
from devkit.membroker import MemBroker, MemRecord
from devkit.pipeline import raw_settings, subject_command
from worker import compose, config, metrics
from worker.core.errors import StoreUnavailable
from worker.intake import BatchOutcome
from worker.loop import Loop
from worker.stall import StalledTooLong
from worker.store.schema import requests


class World:
    def __init__(self, tmp_path: Path, *, partitions: int = 6, systems: tuple[str, ...] = ("alpha",),
                 worker: dict[str, Any] | None = None, **system: Any) -> None:
        """``systems`` are fakes sharing one effects table (and ``system``'s settings); ``worker`` overrides
        worker settings."""
        self.effects_url = f"sqlite:///{tmp_path / 'alpha.db'}"
        raw = raw_settings(store_url=f"sqlite:///{tmp_path / 'store.db'}", bootstrap="127.0.0.1:1",
                           systems={name: {"connector": "devkit.fakes",
                                           "settings": {"url": self.effects_url, **system}} for name in systems})
        raw["kafka"]["commit_interval_seconds"] = 3600  # commits only when a test makes one happen
        raw["worker"].update(store_retry_max_seconds=0.001, batch_size=50, **(worker or {}))
        self.settings = config.build(raw, env={})
        self.topics = self.settings.kafka.topics
        self.broker = MemBroker(partitions)
        parts = compose.build(self.settings, migrate=True, producer_factory=self.broker.producer)
        self.loop = Loop(parts, self.broker.consumer({"group.id": self.settings.kafka.group_id}))
        self.group = self.settings.kafka.group_id

    def send(self, command: dict[str, Any] | bytes, *, partition: int | None = None) -> None:
        value = command if isinstance(command, bytes) else json.dumps(command).encode()
        key = None if isinstance(command, bytes) else command["subject"]["customer_id"]
        self.broker.append(self.topics.commands, key=key, value=value, partition=partition)

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.loop.run_once()

    def until(self, done: Callable[[], bool], limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while not done():
            assert time.monotonic() < deadline, "the loop did not get there"
            self.loop.run_once()

    def requests(self) -> int:
        with self.loop.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar_one())

    def committed(self, partition: int) -> int | None:
        return self.broker.committed.get((self.group, self.topics.commands, partition))

    def receipts(self) -> list[dict[str, Any]]:
        return [json.loads(r.value() or b"{}") for r in self.broker.records(self.topics.receipts)]

    def stored(self) -> dict[int, int]:
        consumer = self.loop.consumer
        return {p: o for (_, p), o in consumer.stored.items()}  # type: ignore[attr-defined]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.loop.start()
    yield w
    if not w.loop.consumer.closed:  # type: ignore[attr-defined]
        w.loop.close()


def test_a_command_sent_twice_is_recorded_once_and_both_offsets_commit(world: World) -> None:
    command = subject_command(systems=["alpha"])
    world.send(command, partition=0)
    world.send(command, partition=0)
    world.turn()
    assert world.requests() == 1 and world.stored() == {0: 2}
    world.until(lambda: any(r["status"] == "completed" for r in world.receipts()))
    assert fakes.effect_count(world.effects_url, command["request_id"], "erase") == 1
    world.loop._commit()
    assert world.committed(0) == 2


def test_a_bad_command_goes_to_the_dlq_and_is_acknowledged(world: World) -> None:
    world.send(b"{not json", partition=3)
    world.until(lambda: len(world.broker.records(world.topics.dlq)) == 1)
    (dead,) = world.broker.records(world.topics.dlq)
    headers = dict(dead.headers() or [])
    assert headers["x-oubli-source"] == f"{world.topics.commands}/3/0".encode() and "x-oubli-error-code" in headers
    assert dead.value() == b"{not json" and world.requests() == 0 and world.stored() == {3: 1}


def test_a_record_whose_headers_cannot_be_decoded_is_taken_in_without_them(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """confluent-kafka raises on a header key that is not UTF-8: that record must not stall the batch."""
    good = subject_command(systems=["alpha"])
    world.send(b"{not json", partition=1)
    world.send(good, partition=1)
    real = MemRecord.headers

    def undecodable(record: MemRecord) -> Any:
        if record.value() == b"{not json":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real(record)

    monkeypatch.setattr(MemRecord, "headers", undecodable)
    world.until(lambda: world.requests() == 1 and len(world.broker.records(world.topics.dlq)) == 1)
    (dead,) = world.broker.records(world.topics.dlq)
    assert dead.value() == b"{not json" and world.stored() == {1: 2}


def test_a_store_outage_mid_batch_acknowledges_the_prefix_rewinds_and_holds_intake(world: World) -> None:
    commands = [subject_command(systems=["alpha"]) for _ in range(3)]
    for command in commands:
        world.send(command, partition=2)
    real = world.loop.intake.handle_batch
    down = {"on": True}

    def first_then_outage(batch: Any, now: Any) -> BatchOutcome:
        if not down["on"]:
            return real(batch, now)
        return BatchOutcome(real(batch[:1], now).results, StoreUnavailable("the store went away"))

    world.loop.intake.handle_batch = first_then_outage  # type: ignore[method-assign]
    world.turn()
    assert world.requests() == 1 and world.stored() == {2: 1}  # the recorded prefix only
    consumer = world.loop.consumer
    assert consumer.position(consumer.assignment())[2].offset == 1  # rewound to the first unrecorded
    assert world.loop.store_stall.active and not world.loop._ready()
    assert {p.partition for p in consumer.assignment()} <= {p for _, p in consumer.paused}  # type: ignore[attr-defined]

    down["on"] = False  # the store is back: the probe passes and intake resumes where it stopped
    time.sleep(0.01)
    world.until(lambda: world.requests() == 3)
    assert world.stored() == {2: 3} and not world.loop.intake_held and world.loop._ready()


def test_intake_hands_the_loop_back_when_its_turn_is_up_and_takes_the_rest_next_turn(world: World) -> None:
    """The loop renews the leases of calls in flight between batches: a batch of 500 hostile commands held it for
    10-20 s (200 s before the schema's cut), past the leases, and another worker took over calls still running.
    Out of time, intake stops after at least one record; the rest is rewound, not held, and comes next turn."""
    assert world.loop.intake.turn_seconds == pytest.approx(5 / 3)  # a third of the 5 s lease of these tests
    world.loop.intake.turn_seconds = 0.0  # every batch is out of time after its first record
    for command in [subject_command(systems=["alpha"]) for _ in range(3)] + [b"{not json"]:
        world.send(command, partition=4)
    world.turn()
    consumer = world.loop.consumer
    assert world.requests() == 1 and world.stored() == {4: 1}
    assert consumer.position(consumer.assignment())[4].offset == 1  # rewound to the first unrecorded
    assert not world.loop.intake_held and not world.loop.intake_stall.active and world.loop._ready()
    world.until(lambda: world.stored() == {4: 4} and len(world.broker.records(world.topics.dlq)) == 1)
    assert world.requests() == 3


def test_a_store_that_fails_every_write_loses_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real store failing (an OperationalError, as a lost connection raises): nothing is acknowledged."""
    store = world.loop.store

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

    for name in ("record_command", "record_commands"):
        if hasattr(store, name):
            monkeypatch.setattr(store, name, broken)
    commands = [subject_command(systems=["alpha"]) for _ in range(2)]
    for command in commands:
        world.send(command, partition=1)
    world.turn(3)
    assert world.requests() == 0 and world.stored() == {} and world.loop.intake_held
    monkeypatch.undo()
    time.sleep(0.01)
    world.until(lambda: world.requests() == 2)
    assert world.stored() == {1: 2}


def test_offsets_are_committed_when_partitions_are_revoked(tmp_path: Path) -> None:
    world = World(tmp_path, partitions=2)
    world.loop.start()
    for _ in range(3):
        world.send(subject_command(systems=["alpha"]), partition=1)
    world.turn()
    assert world.stored() == {1: 3} and world.committed(1) is None  # the commit interval is an hour
    peer = world.broker.consumer({"group.id": world.group})
    peer.subscribe([world.topics.commands])  # partition 1 moves to the peer
    world.turn()
    assert world.committed(1) == 3 and [p.partition for p in world.loop.assigned] == [0]
    assert peer.consume(10, 0) == []  # the peer starts after what the worker recorded
    world.loop.close()


def _revoked_between_poll_and_consume(world: World, partition: int) -> None:
    """Plays a rebalance that lands between the loop's ``poll`` (which hands it a record of ``partition``) and its
    next ``consume`` (whose revoke callback takes ``partition`` away): the record is in the loop's hands, and no
    longer the loop's to acknowledge or rewind."""
    consumer: Any = world.loop.consumer
    consume, poll = consumer.consume, consumer.poll
    first = {"look": True}

    def first_look_finds_nothing(num_messages: int = 1, timeout: float = -1) -> list[MemRecord]:
        if first["look"] and timeout == 0:
            first["look"] = False
            return []  # nothing fetched yet: the loop waits in poll for the first record
        return consume(num_messages, timeout)

    def then_a_peer_joins(timeout: float = -1) -> MemRecord | None:
        record = poll(timeout)
        assert record is not None and record.partition() == partition
        peer = world.broker.consumer({"group.id": world.group})
        peer.subscribe([world.topics.commands])  # the next consume revokes the partition
        world.peer = peer  # type: ignore[attr-defined]
        return record

    consumer.consume, consumer.poll = first_look_finds_nothing, then_a_peer_joins


@pytest.mark.parametrize("store_up", [True, False])
def test_a_record_whose_partition_was_revoked_under_it_does_not_stop_the_loop(tmp_path: Path, store_up: bool) -> None:
    """Recorded, its offset cannot be stored (the client refuses a partition it no longer holds); not recorded, it
    cannot be rewound there. Either way the new owner reads it again from the committed offset (a duplicate at
    worst), and the loop goes on: the error used to escape ``run_once`` and end the worker."""
    world = World(tmp_path, partitions=2)
    world.loop.start()
    world.turn()  # both partitions assigned
    command = subject_command(systems=["alpha"])
    world.send(command, partition=1)
    if not store_up:
        def outage(batch: Any, now: Any) -> BatchOutcome:
            return BatchOutcome([], StoreUnavailable("the store went away"))

        world.loop.intake.handle_batch = outage  # type: ignore[method-assign]
    _revoked_between_poll_and_consume(world, 1)
    world.turn()  # must not raise
    assert [p.partition for p in world.loop.assigned] == [0]
    assert world.requests() == (1 if store_up else 0)
    assert world.committed(1) is None  # nothing acknowledged for a partition the loop gave up
    assert [r.offset() for r in world.peer.consume(10, 0)] == [0]  # type: ignore[attr-defined]
    world.loop.close()


def test_close_drains_the_call_in_flight_publishes_its_receipt_and_commits(tmp_path: Path) -> None:
    world = World(tmp_path, delay_seconds=0.3)
    world.loop.start()
    command = subject_command(systems=["alpha"])
    world.send(command, partition=4)
    world.until(lambda: world.loop.executor.busy() > 0)
    world.loop.close()
    assert fakes.effect_count(world.effects_url, command["request_id"], "erase") == 1
    final = [r for r in world.receipts() if r["request_id"] == command["request_id"]]
    assert final and final[-1]["status"] == "completed"
    assert world.committed(4) == 1 and world.loop.consumer.closed  # type: ignore[attr-defined]


def test_periodic_commits_go_in_the_background_and_the_handover_commit_waits(world: World) -> None:
    """A waited-for periodic commit put a broker round trip in a lone request's path. The commit that hands
    the partitions over (close, revoke) waits, even with nothing new stored since a background one."""
    modes: list[bool] = []
    commit = world.loop.consumer.commit

    def spy(*args: Any, asynchronous: bool = True, **kwargs: Any) -> Any:
        modes.append(asynchronous)
        return commit(*args, asynchronous=asynchronous, **kwargs)

    world.loop.consumer.commit = spy  # type: ignore[method-assign]
    world.send(subject_command(systems=["alpha"]), partition=2)
    world.turn()
    assert modes == [] and world.loop.offsets_pending  # the interval (an hour here) has not passed
    world.loop.last_commit = time.monotonic() - 7200
    world.turn()
    assert modes == [True] and world.committed(2) == 1
    world.turn()
    assert modes == [True]  # nothing new stored: no commit at all
    world.loop.close()
    assert modes == [True, False]


def test_with_calls_in_flight_the_loop_waits_for_a_call_not_for_commands(tmp_path: Path) -> None:
    """Commands are then only looked for: the wait that matters is the call's, whose result the next turn
    records (and whose receipt it publishes)."""
    world = World(tmp_path, delay_seconds=0.3)
    world.loop.start()
    timeouts: list[float] = []
    poll = world.loop.consumer.poll

    def spy(timeout: float = -1) -> Any:
        timeouts.append(timeout)
        return poll(timeout)

    world.loop.consumer.poll = spy  # type: ignore[method-assign]
    world.send(subject_command(systems=["alpha"]), partition=0)
    world.until(lambda: world.loop.executor.busy() > 0)
    world.loop.executor.pool.call_ended.clear()
    assert world.loop.executor.wait_for_calls(10.0)  # woken by the call's end (0.3 s), not the timeout
    timeouts.clear()
    world.until(lambda: world.loop.executor.busy() == 0)
    assert timeouts and set(timeouts) == {0}
    world.until(lambda: not world.loop.relay.pending() and world.loop.executor.busy() == 0)
    timeouts.clear()
    world.turn()
    assert timeouts == [world.settings.worker.poll_seconds]  # idle: the whole poll timeout
    world.loop.close()


def test_the_call_pool_starts_all_its_threads_up_front(world: World) -> None:
    """The pool would start one more thread at each new high of calls at once: memory crept up for a long
    time. Started up front, the worker's memory is what it will be from the first minute."""
    started = world.loop.executor.pool.threads
    assert len(started) == world.settings.worker.max_in_flight
    assert all(thread.is_alive() for thread in started)


def test_intake_logs_one_line_per_batch_and_a_line_per_command_only_at_debug_unless_it_is_a_duplicate(
        world: World) -> None:
    from structlog.testing import capture_logs

    commands = [subject_command(systems=["alpha"]) for _ in range(3)]
    with capture_logs() as logs:
        for command in commands:
            world.send(command, partition=0)
        world.turn()
        world.send(commands[0], partition=0)
        world.turn()
    batches = [e for e in logs if e["event"] == "commands_recorded"]
    assert [(e["log_level"], e["commands"], e.get("new"), e.get("duplicate")) for e in batches] == [
        ("info", 3, 3, None), ("info", 1, None, 1)]
    each = [(e["log_level"], e["outcome"]) for e in logs if e["event"] == "command_recorded"]
    assert each == [("debug", "new")] * 3 + [("info", "duplicate")]


def test_readiness_drops_when_a_turn_has_not_ended_for_longer_than_any_working_turn(world: World) -> None:
    """A store gone silent raises nothing: the loop sits in a read, and no stall is ever recorded. A turn that began
    21 s ago (every store statement ends within 15 s) is stuck, and /readyz says so long before /healthz (60 s)."""
    world.turn()
    assert world.loop._ready()
    world.loop.last_loop -= 21  # the turn that began then has not ended
    assert world.loop._live() and not world.loop._ready()
    world.turn()
    assert world.loop._ready()


def test_a_loop_that_ends_on_its_own_error_closes_in_full_and_the_watchdog_stands_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run`` ending on an error (StalledTooLong past the outage limit) still drains and closes within close's own
    budget: the watchdog (worker.watchdog) must neither take that close for a stuck turn nor outlive ``run``."""
    world = World(tmp_path, worker={"store_outage_exit_seconds": 0.5, "drain_seconds": 0, "poll_seconds": 0.05})
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    def stalled() -> None:
        raise StalledTooLong("the store has kept failing")

    real_close = world.loop.close

    def slow_close() -> None:  # a drain that takes a while (calls in flight, a relay batch to flush)
        time.sleep(1.5)
        real_close()

    world.loop.run_once = stalled  # type: ignore[method-assign]
    world.loop.close = slow_close  # type: ignore[method-assign]
    with pytest.raises(StalledTooLong):
        world.loop.run()
    time.sleep(1.5)  # and after run: nothing is left watching
    assert exits == []


def test_a_relay_producer_found_fenced_at_begin_transaction_is_replaced_and_never_stops_the_worker(
    tmp_path: Path,
) -> None:
    """librdkafka reports a fatal error (fenced by a newer relay, say) on the producer's next call, which may be
    ``begin_transaction``. Raised from there, it went through the loop's guard as a fatal Kafka error and stopped
    the whole worker, where every other relay call drops the producer and starts over."""
    world = World(tmp_path)
    relay = world.loop.relay
    made: list[Any] = []

    def factory(config: dict[str, Any]) -> Any:
        producer = world.broker.producer(config)
        if not made:  # the first producer is found fenced when its first transaction begins
            def fenced() -> None:
                raise KafkaException(KafkaError(KafkaError._FENCED, "a newer producer fenced this one", fatal=True))

            producer.begin_transaction = fenced
        made.append(producer)
        return producer

    relay.producer_factory = factory
    world.loop.start()
    world.send(subject_command(systems=["alpha"]))
    world.until(lambda: any(r.get("status") == "completed" for r in world.receipts()))  # must not raise
    assert len(made) >= 2
    world.loop.close()


def _loop_seconds() -> dict[tuple[str, str], float]:
    return {(s.labels["step"], s.labels["clock"]): s.value for family in metrics.REGISTRY.collect()
            if family.name == "oubli_loop_seconds" for s in family.samples if s.name == "oubli_loop_seconds_total"}


def test_the_loop_counts_each_step_s_wall_and_cpu_time_and_waiting_shows_as_their_difference(world: World) -> None:
    """``oubli_loop_seconds_total``: where a turn's time goes. A claim that waits (here 0.3 s, as on a slow store)
    adds to its wall time, not to the loop thread's CPU."""
    before = _loop_seconds()
    launch = world.loop.executor.launch

    def slow_launch() -> None:
        time.sleep(0.3)
        launch()

    world.loop.executor.launch = slow_launch  # type: ignore[method-assign]
    world.send(subject_command(systems=["alpha"]))
    world.until(lambda: any(r.get("status") == "completed" for r in world.receipts()))
    spent = {key: value - before.get(key, 0.0) for key, value in _loop_seconds().items()}
    steps = {"poll", "intake", "results", "claim", "relay"}
    assert {step for step, _ in spent} == steps
    for step in steps:
        assert spent[step, "wall"] > 0 and 0 <= spent[step, "cpu"] <= spent[step, "wall"] + 0.01, (step, spent)
    assert spent["claim", "wall"] - spent["claim", "cpu"] >= 0.3  # at least one turn's claim slept 0.3 s
    assert spent["claim", "cpu"] < 0.3 and spent["claim", "wall"] > spent["results", "wall"] + 0.25


def test_a_relay_batch_already_acknowledged_gets_the_short_poll_not_a_spin(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With no call in flight, the loop waits for the relay's acknowledgement; a batch already acknowledged whose
    commit is held back (a broker that timed out) gets the short poll, so the loop does not turn without a pause."""
    from worker.loop import BUSY_POLL_SECONDS

    loop = World(tmp_path).loop
    monkeypatch.setattr(loop.relay, "pending", lambda: True)
    monkeypatch.setattr(loop.relay, "wait", lambda timeout: True)
    assert loop._wait_for_work() == 0  # acknowledged while it waited: the next turn commits it at once
    monkeypatch.setattr(loop.relay, "wait", lambda timeout: False)
    assert loop._wait_for_work() == BUSY_POLL_SECONDS

    def broken(timeout: float) -> bool:
        raise RuntimeError("a producer callback failed")

    monkeypatch.setattr(loop.relay, "wait", broken)  # counted and backed off as a relay step, not raised
    assert loop._wait_for_work() == BUSY_POLL_SECONDS
