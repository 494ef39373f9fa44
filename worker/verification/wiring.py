"""Builds the verification parts from settings: the worker's ``_verify`` step, the scan, the gauges."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import sqlalchemy as sa

from connectors import registry
from worker import metrics, states
from worker.config import Settings
from worker.core.connector import Connector, ConnectorContext, IdentifierSource
from worker.core.errors import ConfigError
from worker.core.timefmt import aware, utcnow
from worker.store import db
from worker.store.verification import VerificationStore
from worker.support import CommandPublisher
from worker.verification.scan import Scan, ScanReport
from worker.verification.step import VerificationStep


def step(settings: Settings, engine: sa.Engine, connectors: Mapping[str, Connector],
         clock: Callable[[], datetime]) -> VerificationStep | None:
    """The executor's ``verifier``, or None when ``verification.enabled`` is off."""
    verification = settings.verification
    if not verification.enabled:
        return None
    store = VerificationStore(engine, topics=settings.kafka.topics, policy=states.RetryPolicy(),
                              actor=settings.worker.worker_id)
    key = verification.tombstone_key.get_secret_value().encode() if verification.tombstone_key else None
    return VerificationStep(store, connectors, clock=clock, tombstone_key=key,
                            tombstone_days=verification.tombstone_days)


def scan(settings: Settings, *, dry_run: bool, timeout: float = 120.0,
         clock: Callable[[], datetime] = utcnow) -> ScanReport:
    """``oubli verify``: scans every internal system that can be read, then publishes (unless ``dry_run``)."""
    verification = settings.verification
    if verification.tombstone_key is None:
        raise ConfigError("verification.tombstone_key is not set: there are no tombstones to look for")
    engine = db.create_engine(settings.store_url)
    store = VerificationStore(engine, topics=settings.kafka.topics, policy=states.RetryPolicy(),
                              actor=verification.requested_by)
    context = ConnectorContext(now=clock)
    built: dict[str, Connector] = {}
    try:
        for system_id, system in settings.systems.items():
            built[system_id] = registry.build(system_id, system.connector, system.settings, context)
        sources = {s: c for s, c in built.items() if isinstance(c, IdentifierSource)}
        secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
        publisher = None if dry_run else CommandPublisher(settings.kafka, signing_secret=secret, timeout=timeout)
        runner = Scan(store, tombstone_key=verification.tombstone_key.get_secret_value().encode(),
                      subject_key=settings.subject_key.get_secret_value().encode(), clock=clock,
                      requested_by=verification.requested_by, batch=verification.scan_batch)
        report = runner.run(sources, publisher)
        if not dry_run:
            set_gauges(report.scanned, report.subjects, report.finished_at or clock())
        return report
    finally:
        for connector in built.values():
            connector.close()
        engine.dispose()


def refresh_gauges(engine: sa.Engine, settings: Settings) -> None:
    """For the worker's periodic gauges: the last real scan's figures, as every worker of the group sees them."""
    store = VerificationStore(engine, topics=settings.kafka.topics, policy=states.RetryPolicy(),
                              actor=settings.worker.worker_id)
    last = store.last_scan()
    if last is not None:
        set_gauges(last.scanned, last.subjects, aware(last.finished_at))


def set_gauges(scanned: int, subjects: int, finished_at: datetime) -> None:
    metrics.RESURRECTION_SCANNED.set(scanned)
    metrics.RESURRECTIONS.set(subjects)
    metrics.RESURRECTION_SCAN_TIME.set(finished_at.timestamp())
