"""Where a record batch the Kafka client cannot read ends, found in O(log n) fetches; then its dead letters.

librdkafka names an unreadable batch (a compression bomb, a corrupt one) only by its *base* offset X, the same
after a seek to any offset inside it, and never says where it ends. Stepping over it one offset per refetch
held a partition about 0.7 s per record. Instead the loop probes: it seeks to an offset P and the first thing
the client hands back for that partition answers whether P is *inside* the batch (the same error, with base X)
or *beyond* it (a readable record at P or later, an error naming another base, P at or past the high watermark,
or nothing at all within a bounded wait). Probes gallop (X+1, X+2, X+4, ...) until one lands beyond, or until
the next would pass the high watermark, which then sends one probe just below it; then they bisect. A batch of
n records costs about 2·log2(n) fetches, and about log2(n) when it ends the log. Whatever lies past a probe
that lands beyond the batch is not in it: a batch is one contiguous run of offsets, appended at once.

Once the boundary B is known, offsets ``first``..B-1 are dead-lettered (one DLQ row each, a chunk per turn),
then the consumer seeks to B. ``first`` is X, or the consumer's position when it was already inside the batch
(a restart from an offset committed in the middle of it): those before it were dead-lettered already.

A wrong "beyond" (a probe that timed out on a slow broker) only ends the skip early: the client reports X
again from the short boundary, and a new search starts there. A wrong "inside" cannot happen: a fetch from P
that fails with base X means the batch holding P starts at X, and batches do not overlap.

Limits: a batch holds either records or one transaction control marker, never both, so no marker is ever
dead-lettered; a marker right after the batch is not handed to the application, so a probe on it is answered
by the next record (beyond), or, when the marker ends the log, by the wait running out (beyond, correctly).
On a compacted topic a batch may skip offsets: the skip still dead-letters every offset from ``first`` to B-1,
so a DLQ row may name an offset that holds no record.

Pure: no I/O, the clock is an argument. ``worker.loop`` seeks, fetches and records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# How long a probe waits for the client's answer before it counts as beyond (see the module docstring: the
# safe direction). A fetch answers in milliseconds; a log truncated under the probe, or a trailing control
# marker, never answers.
PROBE_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class BadBatch:
    """One partition's unreadable batch: while ``boundary`` is None, the search; then the dead letters left."""

    base: int  # X, as the client reports it
    first: int  # the first offset not yet dead-lettered
    inside: int  # the highest offset known to be in the batch
    beyond: int | None  # the lowest offset known to be past it (the high watermark at first), None: unknown
    bisecting: bool = False  # a probe landed beyond: galloping is over
    asked: int | None = None  # the offset probed, whose answer is awaited
    asked_at: float = 0.0
    probes: int = 0  # fetches spent, for the log
    code: str = ""  # the client's error name (``_BAD_COMPRESSION``), carried to the dead letters

    @property
    def boundary(self) -> int | None:
        """B, the first offset past the batch, once known."""
        return self.beyond if self.beyond is not None and self.beyond - self.inside <= 1 else None

    @property
    def finished(self) -> bool:
        return self.boundary is not None and self.first >= self.boundary


def start(base: int, position: int | None, high: int | None, code: str = "") -> BadBatch:
    """The client reported base offset ``base`` for a batch it cannot read, fetching from ``position``; ``high``
    is the partition's high watermark (None: unknown), read after the report, so the whole batch lies below it."""
    first = max(base, position or 0)
    return BadBatch(base=base, first=first, inside=first, beyond=high if high is not None and high > first else None,
                    code=code)


def next_probe(batch: BadBatch) -> int | None:
    """The offset to fetch from next, or None: the boundary is known, or a probe awaits its answer."""
    if batch.boundary is not None or batch.asked is not None:
        return None
    if not batch.bisecting:
        gallop = batch.first + max(1, 2 * (batch.inside - batch.first))
        if batch.beyond is None or gallop < batch.beyond:
            return gallop
        # Galloping reached the watermark: the batch may well be the log's tail (a bomb met as it is written),
        # which one probe settles. Otherwise that probe is the first to land beyond, and bisecting starts.
        return batch.beyond - 1
    assert batch.beyond is not None
    return (batch.inside + batch.beyond) // 2


def asked(batch: BadBatch, offset: int, now: float) -> BadBatch:
    """The loop sought to ``offset`` at ``now``."""
    return replace(batch, asked=offset, asked_at=now, probes=batch.probes + 1)


def answer(batch: BadBatch, inside: bool) -> BadBatch:
    """The awaited probe is inside the batch, or beyond it."""
    if batch.asked is None:
        return batch
    if inside:
        return replace(batch, inside=max(batch.inside, batch.asked), asked=None)
    beyond = batch.asked if batch.beyond is None else min(batch.beyond, batch.asked)
    return replace(batch, beyond=beyond, bisecting=True, asked=None)


def observe(batch: BadBatch, offset: int, error_base: int | None) -> BadBatch:
    """What the client handed back for this partition: a readable record at ``offset`` (``error_base`` None),
    or an unreadable batch at base ``error_base``. Only the first answer after a seek counts (the client drops
    what it fetched before one); anything while no probe is awaited is a refetch of the batch, to be ignored."""
    if batch.asked is None:
        return batch
    if error_base is not None:
        return answer(batch, inside=error_base == batch.base)
    return answer(batch, inside=False) if offset >= batch.asked else batch


def expired(batch: BadBatch, now: float) -> BadBatch:
    """A probe unanswered for ``PROBE_WAIT_SECONDS`` counts as beyond."""
    if batch.asked is not None and now - batch.asked_at >= PROBE_WAIT_SECONDS:
        return answer(batch, inside=False)
    return batch


def waiting(batch: BadBatch, now: float) -> BadBatch:
    """No answer can come now (the partition is paused): the wait starts again."""
    return replace(batch, asked_at=now) if batch.asked is not None else batch


def dead_letters(batch: BadBatch, limit: int) -> range:
    """The next offsets to dead-letter, at most ``limit``: none before the boundary is known."""
    boundary = batch.boundary
    if boundary is None:
        return range(0)
    return range(batch.first, min(boundary, batch.first + limit))


def recorded(batch: BadBatch, upto: int) -> BadBatch:
    """The dead letters before ``upto`` are recorded."""
    return replace(batch, first=max(batch.first, upto))
