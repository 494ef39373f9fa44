"""Wires a worker from settings and runs its thin main loop.

``run_once`` is the whole job: take at most one command, tick the executor, tick the outbox relay,
commit offsets now and then. SIGTERM only sets a flag; ``run`` then drains in-flight calls and
leaves the consumer group cleanly.

What stops the loop (it re-raises, ``run`` leaves the group cleanly, Kubernetes restarts the pod):
a fatal Kafka error, and a stall past ``worker.store_outage_exit_seconds`` (``StalledTooLong``).
Nothing else does. A store outage holds intake and the store steps, tried again with backoff, and
readiness drops meanwhile. Any other error in a step is logged by type and place, counted, and the
step is tried again with backoff: a crash would not help, since the restarted worker (or the one its
partitions move to) would meet the same row and crash too, and one row would stop the fleet.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

import boto3
import sqlalchemy as sa
import structlog
from botocore.config import Config as BotoConfig
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from connectors import registry
from worker import failpoints, kafka, metrics, states
from worker.config import Settings
from worker.core.connector import Connector, ConnectorContext, IdentityLookup
from worker.core.errors import ConfigError, StoreUnavailable
from worker.core.timefmt import utcnow
from worker.executor import Executor, ExportPackager
from worker.health import HealthServer
from worker.intake import Intake, Message
from worker.outbox import Relay, producer_config
from worker.stall import Deadline, Stall, StalledTooLong, error_kind, error_site, error_sqlstate
from worker.store import db, reports
from worker.store.faults import is_outage
from worker.store.ratelimits import StoreLimits
from worker.store.repository import ClaimedTask, Finished, Store

log = structlog.get_logger("oubli.worker")

GAUGE_SECONDS = 15.0
# close() spends at most drain_seconds + this. The chart's grace period adds shutdownMarginSeconds (>= 15)
# to drain_seconds: keep this below it.
SHUTDOWN_MARGIN_SECONDS = 10.0
# Of that margin, kept for committing offsets, leaving the group and aborting an open transaction
# (broker calls with their own short timeouts) after the relay had its turn.
LEAVE_RESERVE_SECONDS = 3.0


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


class Worker:
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow, migrate: bool = False,
                 serve_http: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.stopping = False
        self.last_loop = time.monotonic()
        # One stall for the store (a probe decides when it is back), one for the record intake could not
        # record (it may fail for its own reason while the store answers), one per other step.
        self.store_stall = self._stall()
        self.intake_stall = self._stall()
        self.step_stalls: dict[str, Stall] = {}
        self.intake_held = False
        self.last_commit = time.monotonic()
        self.last_gauges = 0.0
        self.offsets_pending = False
        self.assigned: list[TopicPartition] = []

        self.engine = db.create_engine(settings.store_url)
        if migrate:
            db.migrate(self.engine)
        elif db.pending_migrations(self.engine):
            raise ConfigError("the store's schema is behind this version: run `oubli migrate` first")
        self.crash = failpoints.Failpoints(settings.failpoints)
        policy = states.RetryPolicy(settings.retry.base_seconds, settings.retry.max_seconds,
                                    vendor_wait=timedelta(days=settings.worker.vendor_wait_days),
                                    max_lease_losses=settings.worker.max_lease_losses)
        self.store = Store(self.engine, topics=settings.kafka.topics, policy=policy,
                           actor=settings.worker.worker_id)
        identity = build_identity(settings)
        # Vendor rate limits live in the store, so every worker of the group shares one budget.
        context = ConnectorContext(now=clock, identity=identity, limits=StoreLimits(self.engine))
        self.connectors = build_connectors(settings, context)
        self.exports = build_exports(settings)
        self.intake = Intake(
            self.store, subject_key=settings.subject_key.get_secret_value().encode(),
            signing_secret=settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None,
            systems={sid: s.max_attempts for sid, s in settings.systems.items()},
            due_days_default=settings.due_days_default, export_enabled=self.exports is not None,
            identity_enabled=identity is not None, previous_secrets=settings.verification_secrets()[1:],
        )
        self.executor = Executor(
            self.store, self.connectors, concurrency={sid: s.concurrency for sid, s in settings.systems.items()},
            max_in_flight=settings.worker.max_in_flight, lease_seconds=settings.worker.lease_seconds,
            clock=clock, exports=self.exports, crash=self.crash, on_outcome=_count_outcome,
            identity=identity, identity_kinds=settings.identity_kinds,
        )
        self.relay = Relay(self.store, producer_config(settings.kafka), clock=clock, crash=self.crash,
                           on_published=lambda topic, n: metrics.PUBLISHED.labels(topic).inc(n))
        self.consumer = Consumer(kafka.consumer_config(settings.kafka))
        self.health = (HealthServer(settings.worker.http_host, settings.worker.http_port,
                                    live=self._live, ready=self._ready) if serve_http else None)

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stopping:
                self.run_once()
        finally:
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self) -> None:
        if self.health is not None:
            self.health.start()
        self.consumer.subscribe([self.settings.kafka.topics.commands], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("worker_started", worker_id=self.settings.worker.worker_id, systems=sorted(self.connectors),
                 store=self.engine.dialect.name)

    def run_once(self) -> None:
        self.last_loop = time.monotonic()
        self._check_store(self.last_loop)
        self._consume_one()
        self._guarded("executor", self.executor.tick)
        self._guarded("relay", self.relay.tick)
        metrics.IN_FLIGHT.set(self.executor.busy())
        self._maybe_commit()
        if time.monotonic() - self.last_gauges >= GAUGE_SECONDS:
            self._guarded("gauges", self._refresh_gauges)

    def _refresh_gauges(self) -> None:
        self.last_gauges = time.monotonic()
        by_status, overdue, ages = reports.request_gauges(self.engine, self.clock())
        for status in states.RequestStatus:
            metrics.REQUESTS.labels(status.value).set(by_status.get(status.value, 0))
        metrics.OVERDUE.set(overdue)
        for bucket, count in ages.items():
            metrics.OPEN_BY_AGE.labels(bucket).set(count)
        pending, oldest = reports.outbox_backlog(self.engine, self.clock())
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_OLDEST.set(oldest)
        for partition in self.assigned:
            low, high = self.consumer.get_watermark_offsets(partition, cached=True) or (0, 0)
            position = self.consumer.position([partition])[0].offset
            metrics.CONSUMER_LAG.labels(str(partition.partition)).set(max(high - max(position, low), 0))

    def close(self) -> None:
        """Drains in-flight calls, publishes what is left, commits and leaves the group: all within one budget.

        ``drain_seconds`` for the calls in flight, and ``SHUTDOWN_MARGIN_SECONDS`` more for everything else,
        whatever the broker does (every step takes its timeout from the same deadline), so that the chart's
        termination grace period (drain + a margin above this one) always covers it and no SIGKILL cuts a
        publish or a commit in half.
        """
        log.info("worker_draining", in_flight=self.executor.busy())
        drain = self.settings.worker.drain_seconds
        budget = Deadline.after(drain + SHUTDOWN_MARGIN_SECONDS)
        calls = Deadline.after(drain)
        while self.executor.busy() and calls.left() > 0:
            self._guarded("executor", lambda: self.executor.tick(accept_new=False))
            time.sleep(0.05)
        # The relay may wait for the broker; what comes after it keeps LEAVE_RESERVE_SECONDS.
        self._guarded("relay", self.relay.tick)
        self._guarded("relay_drain", lambda: self.relay.drain(budget.left(LEAVE_RESERVE_SECONDS)))
        self._guarded("relay", self.relay.tick)  # what the drained executor wrote last
        self._guarded("relay_drain", lambda: self.relay.drain(budget.left(LEAVE_RESERVE_SECONDS)))
        self._commit()
        self.consumer.close()
        self._guarded("relay_release", self.relay.release, gated=False)  # aborts an open transaction
        self.executor.shutdown()
        for connector in self.connectors.values():
            connector.close()
        if self.health is not None:
            self.health.stop()
        self.engine.dispose()
        log.info("worker_stopped", left_running=self.executor.busy(), budget_left=round(budget.left(), 1))

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    # --- consuming -------------------------------------------------------------------------

    def _consume_one(self) -> None:
        self._hold_intake(self.store_stall.active or not self.intake_stall.due(time.monotonic()))
        message = self.consumer.poll(self.settings.worker.poll_seconds)
        if message is None:
            return
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", code=error.name(), retriable=error.retriable())
            return
        self._record(message)

    def _record(self, message: KafkaMessage) -> None:
        source = f"{message.topic()}/{message.partition()}/{message.offset()}"
        received = message.headers() or []
        pairs = received.items() if isinstance(received, dict) else received
        headers = [(str(k), v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs]
        incoming = Message(value=message.value(), key=message.key(), headers=headers, source=source)
        try:
            result = self.intake.handle(incoming, self.clock())
        except Exception as exc:  # noqa: BLE001 - whatever it is, the record must be rewound, not skipped
            self._intake_failed(message, source, exc)
            return
        self.intake_stall.recovered()
        self.crash.hit(failpoints.AFTER_RECORD)
        self.consumer.store_offsets(message)
        self.offsets_pending = True
        metrics.COMMANDS.labels(result.value).inc()

    def _intake_failed(self, message: KafkaMessage, source: str, exc: Exception) -> None:
        """Not recorded, so not acknowledged: rewind to the record and hold intake, for a bounded time.

        A store outage is the expected case. Anything else means intake broke its contract (it dead-letters
        every bad input itself, ``internal_error`` included), so the record met a bug. It is not skipped, since
        only the DLQ may take a record out of the stream: it is tried again the same bounded way, and past
        ``store_outage_exit_seconds`` the worker exits (``_check_store``), loudly, with nothing lost.
        """
        now = time.monotonic()
        wait = self.intake_stall.failed(now)
        kind = error_kind(exc)
        if isinstance(exc, StoreUnavailable) or is_outage(exc):
            self.store_stall.failed(now)
            metrics.STORE_ERRORS.labels("intake", kind).inc()
            log.error("store_unavailable", during="intake", source=source, error_type=kind,
                      sqlstate=error_sqlstate(exc), retry_in=round(wait, 1))
        else:
            metrics.LOOP_ERRORS.labels("intake", kind).inc()
            log.error("intake_failed", source=source, error_type=kind, site=error_site(exc), retry_in=round(wait, 1))
        self.consumer.seek(TopicPartition(str(message.topic()), message.partition() or 0, message.offset() or 0))
        self._hold_intake(True)

    def _hold_intake(self, hold: bool) -> None:
        if hold:
            # Every turn, not once: partitions assigned while intake is held arrive unpaused.
            self.consumer.pause(self.consumer.assignment())
        elif self.intake_held:
            self.consumer.resume(self.consumer.assignment())
        self.intake_held = hold

    def _maybe_commit(self) -> None:
        if self.offsets_pending and time.monotonic() - self.last_commit >= self.settings.kafka.commit_interval_seconds:
            self._commit()

    def _commit(self) -> None:
        if not self.offsets_pending:
            return
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset_commit_failed", code=exc.args[0].name())
                return
        self.offsets_pending = False
        self.last_commit = time.monotonic()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # cooperative-sticky: the callback names only the partitions added, often none, never the whole set.
        held = {(p.topic, p.partition) for p in self.assigned}
        self.assigned += [p for p in partitions if (p.topic, p.partition) not in held]
        log.info("partitions_assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Everything consumed so far is in the store: commit it before another worker takes over.
        self._commit()
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned = [p for p in self.assigned if (p.topic, p.partition) not in gone]
        for partition in partitions:
            # The new owner reports this partition's lag now; a stale copy here would count it twice.
            with contextlib.suppress(KeyError):  # never measured here
                metrics.CONSUMER_LAG.remove(str(partition.partition))
        log.info("partitions_revoked", partitions=[p.partition for p in partitions])

    # --- health ----------------------------------------------------------------------------

    def _stall(self) -> Stall:
        return Stall(cap=self.settings.worker.store_retry_max_seconds)

    def _check_store(self, now: float) -> None:
        """While the store is out, probes it when due; gives up past ``store_outage_exit_seconds``.

        Readiness alone does not move a Kafka consumer's partitions: a worker that cannot reach its store (a
        broken pool, a stale DNS answer, a network partition of this node) would keep them paused forever
        while its healthy peers could take them. So past the limit it exits non-zero: ``run`` leaves the group
        cleanly, the partitions move at once, and Kubernetes restarts the pod with fresh connections. If the
        store is down for everyone, the pods restart with growing backoff (CrashLoopBackOff, which alerts) and
        lose nothing: no offset moved past an unrecorded command.
        """
        limit = self.settings.worker.store_outage_exit_seconds
        metrics.STORE_OUTAGE.set(self.store_stall.lasted(now))
        metrics.INTAKE_PAUSED.set(1 if self.store_stall.active or self.intake_stall.active else 0)
        for what, stall in (("store", self.store_stall), ("intake", self.intake_stall)):
            if stall.lasted(now) > limit:
                log.error("worker_giving_up", stalled=what, seconds=round(stall.lasted(now)), failures=stall.failures)
                raise StalledTooLong(f"{what} has kept failing for {stall.lasted(now):.0f} s (limit {limit:.0f} s): "
                                     "exiting so that the partitions move and the pod restarts")
        if self.store_stall.active and self.store_stall.due(now):
            try:
                with self.engine.connect() as connection:
                    connection.execute(sa.text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001 - whatever the probe meets, the store is not back
                self.store_stall.failed(now)
                metrics.STORE_ERRORS.labels("probe", error_kind(exc)).inc()
                return
            log.info("store_available", after_seconds=round(self.store_stall.lasted(now), 1))
            self.store_stall.recovered()
            self.intake_stall.retry_at = now  # the record intake could not write is tried at once

    def _guarded(self, name: str, step: Callable[[], Any], *, gated: bool = True) -> None:
        """Runs one store-backed step of the loop. No failure of it stops the worker but a fatal Kafka one.

        A store outage holds every store step until the probe in ``_check_store`` passes. Any other error is
        a bug or a row the step cannot handle: it is logged by type and place (never its message, which may
        quote personal data), counted in ``oubli_loop_errors_total``, and the step alone is tried again with
        backoff while readiness is down. The other steps go on. ``gated=False`` tries once whatever the
        backoff says (on shutdown).
        """
        stall = self.step_stalls.setdefault(name, self._stall())
        now = time.monotonic()
        if gated and (self.store_stall.active or not stall.due(now)):
            return
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - see the docstring: one bad row must not crash-loop the fleet
            if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) \
                    and exc.args[0].fatal():
                raise  # the client is unusable: only a new process helps
            kind = error_kind(exc)
            if isinstance(exc, StoreUnavailable) or is_outage(exc):
                if not self.store_stall.active:
                    log.error("store_unavailable", during=name, error_type=kind, sqlstate=error_sqlstate(exc))
                self.store_stall.failed(now)
                metrics.STORE_ERRORS.labels(name, kind).inc()
            else:
                wait = stall.failed(now)
                metrics.LOOP_ERRORS.labels(name, kind).inc()
                log.error("loop_step_failed", step=name, error_type=kind, site=error_site(exc), retry_in=round(wait, 1))
            return
        stall.recovered()

    def _live(self) -> bool:
        return time.monotonic() - self.last_loop < 60

    def _ready(self) -> bool:
        """Not ready while the store is out, intake is held on a record, or a step that does the work keeps failing
        (the gauges, read every 15 s, may miss a turn during a rebalance: that is no reason to drop readiness)."""
        stalled = self.store_stall.active or self.intake_stall.active or any(
            stall.active for name, stall in self.step_stalls.items() if name != "gauges")
        return self._live() and not stalled and not self.stopping


def _count_outcome(task: ClaimedTask, event: states.Event, seconds: float, finished: Finished | None) -> None:
    metrics.SYSTEM_CALLS.labels(task.system, type(event).__name__).inc()
    metrics.CALL_SECONDS.labels(task.system).observe(seconds)
    if isinstance(event, states.Confirm):
        metrics.SYSTEM_OUTCOMES.labels(task.system, event.outcome).inc()
    elif isinstance(event, states.Fail) and event.retryable:
        metrics.RETRIES.labels(task.system, event.code).inc()
    if finished is not None and finished.closed and finished.requested_at is not None:
        metrics.END_TO_END.labels(finished.kind).observe((utcnow() - finished.requested_at).total_seconds())
