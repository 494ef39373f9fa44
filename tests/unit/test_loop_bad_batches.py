"""The loop over a record batch the client cannot read (devkit.membroker reports it as librdkafka does): its end is
found in a few fetches, every offset of it is dead-lettered once, nothing of its partition is recorded or
acknowledged meanwhile, other partitions go on, and a rewind, a revoke or a probe that gets no answer never lose a
record nor dead-letter one twice. The real client's side: tests/integration/test_unreadable_records.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from devkit.pipeline import subject_command
from tests.unit.test_loop import World
from worker import badbatch, compose
from worker.core.errors import StoreUnavailable
from worker.intake import BatchOutcome
from worker.loop import Loop


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, partitions=2)
    w.loop.start()
    yield w
    if not w.loop.consumer.closed:  # type: ignore[attr-defined]
        w.loop.close()


def dead_letters(world: World) -> Counter[str]:
    """DLQ rows per source offset (``partition/offset``), each with its code."""
    rows: Counter[str] = Counter()
    for record in world.broker.records(world.topics.dlq):
        headers = dict(record.headers() or [])
        assert headers["x-oubli-error-code"] == b"too_large" and record.value() is None
        rows[headers["x-oubli-source"].decode().split("/", 1)[1]] += 1
    return rows


def send_around(world: World, partition: int, size: int) -> tuple[list[dict[str, Any]], range]:
    """A command, a bad batch of ``size`` records, a command: returns the commands and the batch's offsets."""
    before, after = subject_command(systems=["alpha"]), subject_command(systems=["alpha"])
    world.send(before, partition=partition)
    bad = world.broker.append_unreadable(world.topics.commands, partition, size)
    world.send(after, partition=partition)
    return [before, after], bad


def seeks(world: World) -> list[int]:
    """Counts the loop's seeks, by offset."""
    made: list[int] = []
    real = world.loop.consumer.seek

    def counted(partition: Any) -> None:
        made.append(partition.offset)
        real(partition)

    world.loop.consumer.seek = counted  # type: ignore[method-assign]
    return made


def test_a_bad_batch_is_measured_in_a_few_fetches_and_dead_lettered_once_while_other_partitions_go_on(
        world: World) -> None:
    commands, bad = send_around(world, 0, 100)
    others = [subject_command(systems=["alpha"]) for _ in range(5)]
    made = seeks(world)
    world.turn()  # the report: the first probe goes out; the other partition is recorded meanwhile
    for command in others:
        world.send(command, partition=1)
    world.until(lambda: world.requests() == 7)
    assert dead_letters(world) == {f"0/{offset}": 1 for offset in bad}
    assert world.stored() == {0: 102, 1: 5}
    assert len(made) <= 2 * 100 .bit_length() + 2 and made[-1] == 101  # the probes, then past the batch
    world.turn(3)
    assert sum(dead_letters(world).values()) == 100 and not world.loop.reader.bad_batches
    world.loop._commit()
    assert world.committed(0) == 102


def test_records_behind_the_batch_are_not_recorded_before_it_is_dead_lettered(world: World) -> None:
    (before, after), bad = send_around(world, 0, 30)
    recorded: list[str] = []
    real = world.loop.intake.handle_batch

    def watched(batch: Any, now: Any) -> BatchOutcome:
        recorded.extend(message.source.split("/", 1)[1] for message in batch)
        return real(batch, now)

    world.loop.intake.handle_batch = watched  # type: ignore[method-assign]
    world.until(lambda: world.requests() == 2)
    assert recorded == ["0/0", *(f"0/{offset}" for offset in bad), "0/31"]  # in order, each once


def test_dead_letters_go_in_chunks_of_a_batch_and_their_offsets_follow(world: World) -> None:
    """batch_size is 50 here: a turn stays short however large the bad batch."""
    _, bad = send_around(world, 1, 120)
    sizes: list[int] = []
    real = world.loop.intake.handle_batch

    def watched(batch: Any, now: Any) -> BatchOutcome:
        sizes.append(len(batch))
        return real(batch, now)

    world.loop.intake.handle_batch = watched  # type: ignore[method-assign]
    stored: list[int] = []
    while world.requests() < 2:
        world.turn()
        stored.append(world.stored().get(1, 0))
    assert sizes == [1, 50, 50, 20, 1] and sorted(set(stored)) == [1, 51, 101, 121, 122]
    assert dead_letters(world) == {f"1/{offset}": 1 for offset in bad}


def test_a_store_outage_while_dead_lettering_rewinds_and_measures_again_without_a_second_row(world: World) -> None:
    _, bad = send_around(world, 0, 120)
    real = world.loop.intake.handle_batch
    calls = {"n": 0}

    def outage_on_the_second_chunk(batch: Any, now: Any) -> BatchOutcome:
        calls["n"] += 1
        if calls["n"] == 3:  # the command before, the first chunk, then the second chunk: its first 10 only
            return BatchOutcome(real(batch[:10], now).results, StoreUnavailable("the store went away"))
        return real(batch, now)

    world.loop.intake.handle_batch = outage_on_the_second_chunk  # type: ignore[method-assign]
    world.until(lambda: calls["n"] >= 3)
    assert world.stored() == {0: 61} and not world.loop.reader.bad_batches  # acknowledged up to what was recorded
    world.until(lambda: world.requests() == 2)
    assert dead_letters(world) == {f"0/{offset}": 1 for offset in bad}
    assert world.stored() == {0: 122}


def test_a_revoked_partition_is_measured_again_by_its_next_owner(tmp_path: Path) -> None:
    first = World(tmp_path, partitions=1)
    first.loop.start()
    _, bad = send_around(first, 0, 40)
    first.turn(3)
    (probing,) = first.loop.reader.bad_batches.values()
    assert probing.asked is not None and probing.boundary is None  # mid-probe
    parts = compose.build(first.settings, migrate=False, producer_factory=first.broker.producer)
    peer = Loop(parts, first.broker.consumer({"group.id": first.group}))
    peer.start()
    first.loop.close()  # hands the partition over mid-probe, with the offset recorded before the batch
    assert not first.loop.reader.bad_batches and first.committed(0) == 1
    first.loop = peer
    first.until(lambda: first.requests() == 2)
    assert dead_letters(first) == {f"0/{offset}": 1 for offset in bad}
    peer.close()
    assert first.committed(0) == 42


def test_probes_that_get_no_answer_end_the_batch_early_and_the_next_search_goes_on(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """No watermark, and a log that ends with the batch: the probes past its end are never answered. A lost
    answer counts as beyond, so a batch may be cut short, never stretched over a readable record."""
    monkeypatch.setattr(badbatch, "PROBE_WAIT_SECONDS", 0.0)

    def no_watermark(*_args: Any, **_kwargs: Any) -> Any:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))

    monkeypatch.setattr(world.loop.consumer, "get_watermark_offsets", no_watermark)
    bad = world.broker.append_unreadable(world.topics.commands, 1, 37)
    world.until(lambda: dead_letters(world).total() == 37)
    assert dead_letters(world) == {f"1/{offset}": 1 for offset in bad}
    command = subject_command(systems=["alpha"])
    world.send(command, partition=1)
    world.until(lambda: world.requests() == 1)
    assert world.stored() == {1: 38} and dead_letters(world).total() == 37
