"""Batch loading: rows into SQL (executemany per table, parents first), recordings into S3."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from devkit.sampledata.audio import synthetic_wav
from devkit.sampledata.bundle import Recording

DEFAULT_KEY_TEMPLATE = "recordings/{customer_id}/{yyyy}/{mm}/{call_id}.wav"


@dataclass
class TableLoader:
    """Buffers rows per table and flushes them in dependency order, ``batch_rows`` at a time."""

    engine: sa.Engine
    metadata: sa.MetaData
    batch_rows: int = 5000
    counts: dict[str, int] = field(default_factory=dict)
    _buffer: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _buffered: int = 0

    def add(self, rows: Mapping[str, list[dict[str, Any]]]) -> None:
        for table, items in rows.items():
            self._buffer.setdefault(table, []).extend(items)
            self._buffered += len(items)
        if self._buffered >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        with self.engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                items = self._buffer.pop(table.name, [])
                if items:
                    conn.execute(sa.insert(table), items)
                    self.counts[table.name] = self.counts.get(table.name, 0) + len(items)
        self._buffered = 0

    def finish(self) -> None:
        self.flush()
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.begin() as conn:  # explicit ids were inserted: move serial sequences past them
            for table in self.metadata.sorted_tables:
                for column in table.primary_key.columns:
                    if isinstance(column.type, sa.Integer) and column.autoincrement in (True, "auto"):
                        highest = conn.execute(sa.select(sa.func.max(column))).scalar() or 0
                        conn.execute(
                            sa.select(
                                sa.func.setval(
                                    sa.func.pg_get_serial_sequence(table.name, column.name), highest + 1, False
                                )
                            )
                        )


def recording_key(template: str, recording: Recording) -> str:
    return template.format(
        customer_id=recording.customer_id,
        call_id=recording.call_id,
        yyyy=f"{recording.recorded_at.year:04d}",
        mm=f"{recording.recorded_at.month:02d}",
    )


def recording_metadata(recording: Recording) -> dict[str, str]:
    """S3 user metadata linking a recording to its customer (``x-amz-meta-*``)."""
    return {
        "customer-id": recording.customer_id,
        "call-id": recording.call_id,
        "recorded-at": recording.recorded_at.isoformat(),
        "duration-seconds": str(recording.duration_seconds),
        "agent": recording.agent,
        "direction": recording.direction,
    }


def upload_recordings(
    s3: Any, bucket: str, recordings: Iterable[Recording], template: str = DEFAULT_KEY_TEMPLATE
) -> int:
    count = 0
    for recording in recordings:
        s3.put_object(
            Bucket=bucket,
            Key=recording_key(template, recording),
            Body=synthetic_wav(recording.call_id, seconds=min(1.0, recording.duration_seconds / 60)),
            ContentType="audio/wav",
            Metadata=recording_metadata(recording),
        )
        count += 1
    return count
