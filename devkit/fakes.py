"""A scriptable connector for pipeline tests. Its effects go to a SQL table, so they survive SIGKILL.

Settings: ``url`` (where to log effects), ``transient_failures`` (fail the first N calls of each
request with a retryable error), ``permanent`` (always fail permanently), ``polls`` (return
``Pending`` and confirm after N polls), ``outcome`` (default ``erased``), ``delay_seconds`` (sleep
in every erase/export call, to stand in for a slow system: only the connector's pool thread waits),
``record_calls`` (write each erase/export call's start and end time to ``fake_calls``, so that
benchmarks can count the calls in flight at once).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from worker.core.connector import CallResult, ConnectorContext, ExportWriter, Pending, Result, Subject
from worker.core.errors import PermanentError, RetryableError

metadata = sa.MetaData()
effects = sa.Table(
    "fake_effects", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("system", sa.String(64)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("action", sa.String(32)),
)
call_times = sa.Table(
    "fake_calls", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("system", sa.String(64)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("started_at", sa.Float),  # time.time(), comparable across processes on one machine
    sa.Column("ended_at", sa.Float),
)


class FakeConnector:
    def __init__(self, system: str, settings: Mapping[str, Any]) -> None:
        self.system = system
        self.engine = sa.create_engine(settings["url"], poolclass=sa.pool.NullPool)
        metadata.create_all(self.engine, checkfirst=True)
        self.transient_failures = int(settings.get("transient_failures", 0))
        self.permanent = bool(settings.get("permanent", False))
        self.polls = int(settings.get("polls", 0))
        self.outcome = settings.get("outcome", "erased")
        self.delay_seconds = float(settings.get("delay_seconds", 0.0))
        self.record_calls = bool(settings.get("record_calls", False))

    def _log(self, subject: Subject, action: str) -> int:
        with self.engine.begin() as conn:
            conn.execute(effects.insert().values(system=self.system, request_id=subject.request_id, action=action))
            count: int = conn.execute(sa.select(sa.func.count()).select_from(effects).where(
                effects.c.system == self.system, effects.c.request_id == subject.request_id,
                effects.c.action == action)).scalar_one()
            return count

    def _act(self, subject: Subject, action: str, outcome: str) -> CallResult:
        started = time.time()
        try:
            return self._act_now(subject, action, outcome)
        finally:
            if self.delay_seconds:
                time.sleep(max(0.0, started + self.delay_seconds - time.time()))
            if self.record_calls:
                with self.engine.begin() as conn:
                    conn.execute(call_times.insert().values(system=self.system, request_id=subject.request_id,
                                                       started_at=started, ended_at=time.time()))

    def _act_now(self, subject: Subject, action: str, outcome: str) -> CallResult:
        calls = self._log(subject, f"{action}_call")
        if self.permanent:
            raise PermanentError(f"{self.system} refused the call (HTTP 403)")
        if calls <= self.transient_failures:
            raise RetryableError(f"{self.system} answered HTTP 503", retry_after=0.0)
        if self.polls:
            return Pending(vendor_ref=f"job-{subject.request_id}", poll_after=0.0)
        self._log(subject, action)
        return Result(outcome)  # type: ignore[arg-type]

    def erase(self, subject: Subject) -> CallResult:
        return self._act(subject, "erase", self.outcome)

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        writer.write_json(f"{self.system}.json", {"customer": "exported"})
        result = self._act(subject, "export", "exported")
        return Result("exported", records=1) if isinstance(result, Result) else result

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        polls = self._log(subject, "poll")
        if polls < self.polls:
            return Pending(vendor_ref=vendor_ref, poll_after=0.0)
        self._log(subject, "erase")
        return Result("requested", vendor_ref=vendor_ref)

    def close(self) -> None:
        self.engine.dispose()


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> FakeConnector:
    return FakeConnector(system_id, settings)


def effect_count(url: str, request_id: str, action: str, system: str | None = None) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    metadata.create_all(engine, checkfirst=True)
    query = sa.select(sa.func.count()).select_from(effects).where(
        effects.c.request_id == request_id, effects.c.action == action)
    if system is not None:
        query = query.where(effects.c.system == system)
    with engine.connect() as conn:
        count: int = conn.execute(query).scalar_one()
    engine.dispose()
    return count
