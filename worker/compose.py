"""The composition root: ``build(settings, clock)`` assembles a worker's parts, without any Kafka client.

``Parts`` holds the store (migrated, or checked to be current), the connectors, the export packager, intake,
the executor and the outbox relay. The relay creates its producer only when it first leads, through
``producer_factory`` (``confluent_kafka.Producer`` unless a test passes ``devkit.membroker``'s). The loop
(``worker.loop``) drives these parts from a consumer; ``Parts.close`` releases what they hold.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import boto3
import sqlalchemy as sa
import structlog
from botocore.config import Config as BotoConfig

from connectors import registry
from worker import failpoints, metrics, states
from worker.broker import ProducerFactory
from worker.config import Settings
from worker.core.connector import Connector, ConnectorContext, IdentityLookup, Verifier
from worker.core.errors import ConfigError
from worker.core.timefmt import utcnow
from worker.executor import Executor, ExportPackager, internal_limit
from worker.intake import TURN_SECONDS, Intake
from worker.outbox import Relay, producer_config
from worker.retention.vendorkeep import VendorRetention
from worker.shutdown import StopRequest
from worker.stall import Stall, StalledTooLong, error_kind, error_sqlstate
from worker.store import db
from worker.store.deferrals import ReserveDeferral
from worker.store.faults import is_outage
from worker.store.ratelimits import StoreLimits
from worker.store.repository import ClaimedTask, Finished, Store
from worker.verification import wiring as verification

log = structlog.get_logger("oubli.worker")

@dataclass
class Parts:
    settings: Settings
    clock: Callable[[], datetime]
    engine: sa.Engine
    crash: failpoints.Failpoints
    store: Store
    connectors: dict[str, Connector]
    exports: ExportPackager | None
    intake: Intake
    executor: Executor
    relay: Relay

    def close(self) -> None:
        """Stops the executor's pools, closes the connectors and the store's connections (after the relay)."""
        self.executor.shutdown()
        for connector in self.connectors.values():
            connector.close()
        self.engine.dispose()


def build(settings: Settings, clock: Callable[[], datetime] = utcnow, *, migrate: bool = False,
          producer_factory: ProducerFactory | None = None, wait_for_store: StopRequest | None = None) -> Parts:
    """``wait_for_store``: a store out at start is waited for as a running worker waits (``wait_until_reachable``),
    until that stop is asked for."""
    # The loop thread, a spare, and each internal step that may run at once: with fewer pooled connections,
    # SQLAlchemy opens overflow ones and closes them again at check-in, and every verification paid for a new
    # PostgreSQL session (bench/README.md, sixteenth round: 544 connections for 1,000 erasures).
    engine = db.create_engine(settings.store_url,
                              pool_size=2 + internal_limit(settings.worker.max_in_flight))
    if wait_for_store is not None:
        wait_until_reachable(engine, settings.worker.store_outage_exit_seconds, settings.worker.store_retry_max_seconds,
                             wait_for_store)
    if migrate:
        db.migrate(engine)
    elif db.pending_migrations(engine):
        raise ConfigError("the store's schema is behind this version: run `oubli migrate` first")
    crash = failpoints.Failpoints(settings.failpoints)
    policy = states.RetryPolicy(settings.retry.base_seconds, settings.retry.max_seconds,
                                vendor_wait=timedelta(days=settings.worker.vendor_wait_days),
                                max_lease_losses=settings.worker.max_lease_losses)
    store = Store(engine, topics=settings.kafka.topics, policy=policy, actor=settings.worker.worker_id)
    identity = build_identity(settings)
    # Vendor rate limits live in the store, so every worker of the group shares one budget.
    context = ConnectorContext(now=clock, identity=identity, limits=StoreLimits(engine))
    connectors = build_connectors(settings, context)
    exports = build_exports(settings)
    verifier = verification.step(settings, engine, connectors, clock)  # None unless verification.enabled
    intake = Intake(
        store, subject_key=settings.subject_key.get_secret_value().encode(),
        signing_secret=settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None,
        systems={sid: s.max_attempts for sid, s in settings.systems.items()},
        due_days_default=settings.due_days_default, export_enabled=exports is not None,
        identity_enabled=identity is not None, previous_secrets=settings.verification_secrets()[1:],
        # Only where some system can check itself: with vendors alone, the step would have nothing to verify.
        verify_enabled=verifier is not None and any(isinstance(c, Verifier) for c in connectors.values()),
        # A third of a lease at most: the loop renews the leases of the calls in flight between batches.
        turn_seconds=min(TURN_SECONDS, settings.worker.lease_seconds / 3),
    )
    deferral = ReserveDeferral(engine, clock)

    def on_outcome(task: ClaimedTask, event: states.Event, seconds: float, finished: Finished | None) -> None:
        count_outcome(task, event, seconds, finished)
        deferral(task, event, seconds, finished)  # background work waits for the next quota window

    executor = Executor(
        store, connectors, concurrency={sid: s.concurrency for sid, s in settings.systems.items()},
        max_in_flight=settings.worker.max_in_flight, lease_seconds=settings.worker.lease_seconds,
        clock=clock, exports=exports, crash=crash, on_outcome=on_outcome,
        identity=identity, identity_kinds=settings.identity_kinds, verifier=verifier,
        skip=VendorRetention({sid: s.keeps_data_days for sid, s in settings.systems.items()}),
        call_timeout=settings.worker.call_timeout_seconds,
        unconfigured_grace=timedelta(seconds=settings.worker.unconfigured_grace_seconds),
    )
    extra: dict[str, Any] = {} if producer_factory is None else {"producer_factory": producer_factory}
    relay = Relay(store, producer_config(settings.kafka), clock=clock, crash=crash,
                  on_published=lambda topic, n: metrics.PUBLISHED.labels(topic).inc(n), **extra)
    return Parts(settings=settings, clock=clock, engine=engine, crash=crash, store=store, connectors=connectors,
                 exports=exports, intake=intake, executor=executor, relay=relay)


def wait_until_reachable(engine: sa.Engine, limit: float, cap: float, stop: StopRequest) -> None:
    """Returns once the store answers; raises ``StalledTooLong`` (exit 4) past ``limit`` seconds of outage, and
    ``StoppedBeforeStart`` as soon as ``stop`` is asked for.

    A worker restarted during a database restart used to exit 4 at once: its pod then sat in a crash loop whose
    backoff (up to 5 minutes) outlasted the outage, where a running worker rides out ``limit`` seconds of it.
    Only an outage is waited for (``is_outage``); any other error (a wrong password, an unknown database) is raised.
    """
    stall = Stall(cap=cap)
    while True:
        now = time.monotonic()
        try:
            db.ping(engine)
        except Exception as exc:
            if not is_outage(exc):
                raise
            if stall.lasted(now) >= limit:
                log.error("worker_giving_up", stalled="store", seconds=round(stall.lasted(now)),
                          failures=stall.failures)
                raise StalledTooLong(f"the store was unreachable for {limit:.0f} s at start") from exc
            wait = stall.failed(now)
            log.error("store_unavailable", during="start", error_type=error_kind(exc), sqlstate=error_sqlstate(exc),
                      retry_in=round(wait, 1))
            stop.sleep(min(wait, max(limit - stall.lasted(now), 0.0)))  # start-up only: nothing else runs yet
            continue
        if stall.active:
            log.info("store_available", after_seconds=round(stall.lasted(now), 1))
        return


def s3_client(settings: Settings) -> Any:
    s3 = settings.s3
    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
        aws_access_key_id=s3.access_key_id.get_secret_value() if s3.access_key_id else None,
        aws_secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
        config=BotoConfig(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
    )


def build_exports(settings: Settings) -> ExportPackager | None:
    if not settings.export:
        return None
    from worker.export import ExportStore

    packager: ExportPackager = ExportStore.from_settings(s3_client(settings), settings.export)
    return packager


def build_identity(settings: Settings) -> IdentityLookup | None:
    if settings.identity_system is None:
        return None
    system = settings.systems.get(settings.identity_system)
    if system is None:
        raise ConfigError(f"identity_system {settings.identity_system} is not a configured system")
    module = importlib.import_module(system.connector if "." in system.connector else f"connectors.{system.connector}")
    factory = getattr(module, "create_identity_lookup", None)
    if factory is None:
        raise ConfigError(f"connector {system.connector} cannot look identifiers up")
    lookup: IdentityLookup = factory(system.settings)
    return lookup


def build_connectors(settings: Settings, context: ConnectorContext) -> dict[str, Connector]:
    return {
        system_id: registry.build(system_id, system.connector, system.settings, context)
        for system_id, system in settings.systems.items()
    }


def count_outcome(task: ClaimedTask, event: states.Event, seconds: float, finished: Finished | None) -> None:
    _series(metrics.SYSTEM_CALLS, task.system, type(event).__name__).inc()
    _series(metrics.CALL_SECONDS, task.system).observe(seconds)
    if isinstance(event, states.Confirm):
        _series(metrics.SYSTEM_OUTCOMES, task.system, event.outcome).inc()
    elif isinstance(event, states.Fail) and event.retryable:
        _series(metrics.RETRIES, task.system, event.code).inc()
    if finished is not None and finished.closed and finished.requested_at is not None:
        metrics.END_TO_END.labels(finished.kind).observe((utcnow() - finished.requested_at).total_seconds())


@functools.lru_cache(maxsize=4096)
def _series(metric: Any, *labels: str) -> Any:
    """A labelled series, looked up once: ``labels()`` takes a lock and builds its key on every call, and
    this runs once per connector call. Bounded: systems, events, outcomes and error codes are few."""
    return metric.labels(*labels)

