"""The bad-batch search (worker.badbatch), against a simulated log: every boundary of small batches, wherever the
consumer stood in them, with and without a high watermark; a bound on the fetches; and, with probes that time out
at random, that the search never claims an offset past the batch and always makes progress."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from worker import badbatch
from worker.badbatch import PROBE_WAIT_SECONDS, BadBatch


def search(base: int, end: int, position: int | None, high: int | None,
           lost: frozenset[int] = frozenset()) -> BadBatch:
    """Runs the search over a log whose batch ``base``..``end``-1 is unreadable, readable records around it, and
    ``high`` the watermark (None: not known to the search; the log then ends at ``end`` + 5). A probe in ``lost``
    (by its number) is never answered."""
    batch = badbatch.start(base, position, high)
    log_end = high if high is not None else end + 5
    now = 0.0
    while batch.boundary is None:
        probe = badbatch.next_probe(batch)
        assert probe is not None
        assert probe > batch.inside and (batch.beyond is None or probe < batch.beyond)
        batch = badbatch.asked(batch, probe, now)
        if batch.probes - 1 in lost or probe >= log_end:  # nothing to fetch there, or the answer never comes
            now += PROBE_WAIT_SECONDS
            assert badbatch.expired(batch, now - 0.001) == batch  # not yet
            batch = badbatch.expired(batch, now)
        elif probe < end:
            batch = badbatch.observe(batch, base, error_base=base)
        else:
            batch = badbatch.observe(batch, probe, error_base=None)
        assert batch.asked is None
        assert batch.probes < 200
    return batch


def test_every_boundary_of_small_batches_is_found_from_wherever_the_consumer_stood() -> None:
    for base, size in itertools.product((0, 7), range(1, 70)):
        end = base + size
        for position, extra in itertools.product((None, *range(base - 1, end)), (None, 0, 1, 3, 1000)):
            high = None if extra is None else end + extra
            batch = search(base, end, position, high)
            assert batch.boundary == end, (base, size, position, high)
            assert batch.first == max(base, position or 0)
            # About 2·log2(n) fetches; about log2(n) when the batch ends the log.
            assert batch.probes <= 2 * (end - batch.first).bit_length() + 1, (base, size, position, high)
            if high == end:
                assert batch.probes <= (end - batch.first).bit_length() + 1


def test_a_large_batch_costs_a_few_dozen_fetches_not_one_per_record() -> None:
    assert search(100, 100 + 300, None, 100_000).probes <= 18
    assert search(100, 100 + 1_000_000, None, None).probes <= 41


def test_a_single_record_batch_ends_at_the_next_offset() -> None:
    batch = search(5, 6, None, 1_000)
    assert (batch.boundary, batch.probes) == (6, 1)
    assert search(5, 6, None, 6).probes == 0  # the last record of the log: nothing to fetch


@given(base=st.integers(0, 50), size=st.integers(1, 3000), position=st.integers(0, 3000),
       high_extra=st.none() | st.integers(0, 10), lost=st.frozensets(st.integers(0, 40), max_size=10))
def test_unanswered_probes_never_stretch_the_batch_and_always_move_on(
    base: int, size: int, position: int, high_extra: int | None, lost: frozenset[int],
) -> None:
    end = base + size
    position = min(position, end - 1)
    batch = search(base, end, position, None if high_extra is None else end + high_extra, lost)
    assert batch.boundary is not None
    assert max(base, position) < batch.boundary <= end  # short at worst: the next search starts there
    if not lost:
        assert batch.boundary == end


def test_only_the_first_answer_after_a_seek_counts() -> None:
    batch = badbatch.asked(badbatch.start(10, None, None), 11, now=0)
    assert badbatch.observe(batch, 10, error_base=None) == batch  # a record before the probe: not an answer
    assert badbatch.observe(batch, 11, error_base=None).beyond == 11
    assert badbatch.observe(batch, 30, error_base=None).beyond == 11  # past a control marker or aborted records
    assert badbatch.observe(batch, 11, error_base=11).beyond == 11  # another unreadable batch starts there
    inside = badbatch.observe(batch, 10, error_base=10)
    assert (inside.inside, inside.asked, inside.beyond) == (11, None, None)
    # No probe awaited: the client's refetches of the batch change nothing.
    assert badbatch.observe(inside, 10, error_base=10) == inside
    assert badbatch.observe(inside, 50, error_base=None) == inside
    assert badbatch.expired(inside, 1e9) == inside


def test_a_paused_partition_restarts_the_wait() -> None:
    batch = badbatch.asked(badbatch.start(0, None, None), 1, now=0)
    held = badbatch.waiting(batch, PROBE_WAIT_SECONDS - 1)
    assert badbatch.expired(held, PROBE_WAIT_SECONDS) == held
    assert badbatch.expired(held, 2 * PROBE_WAIT_SECONDS - 1).beyond == 1
    idle = badbatch.start(0, None, None)
    assert badbatch.waiting(idle, 99) == idle


def test_dead_letters_come_in_chunks_once_the_boundary_is_known() -> None:
    batch = badbatch.start(3, None, 4 + 1)  # the batch is 3 (maybe 4): unknown yet
    assert badbatch.dead_letters(batch, 10) == range(0)
    batch = search(3, 3 + 25, None, 100)
    assert not batch.finished
    assert badbatch.dead_letters(batch, 10) == range(3, 13)
    batch = badbatch.recorded(batch, 13)
    assert badbatch.dead_letters(batch, 10) == range(13, 23)
    batch = badbatch.recorded(badbatch.recorded(batch, 23), 20)  # never backwards
    assert badbatch.dead_letters(batch, 10) == range(23, 28)
    batch = badbatch.recorded(batch, 28)
    assert batch.finished and badbatch.dead_letters(batch, 10) == range(28, 28)
    assert badbatch.next_probe(batch) is None


def test_a_stale_watermark_at_or_below_the_batch_is_not_a_bound() -> None:
    assert badbatch.start(10, None, 10).beyond is None
    assert badbatch.start(10, 12, 12).beyond is None
    assert badbatch.start(10, None, 11).boundary == 11
