"""The worker's main loop over injected parts (``worker.compose.Parts``) and a consumer (``worker.broker``).

``run_once`` is the whole job: consume a batch of commands and record it, tick the executor, tick the
outbox relay, commit offsets now and then. ``close`` drains within one budget and leaves the group.
What stops the loop: a fatal Kafka error, and a stall past ``worker.store_outage_exit_seconds``
(``StalledTooLong``). A store outage holds intake (paused, rewound to the first unrecorded command) and
the store steps; any other failing step is logged, counted and tried again with backoff.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker import failpoints, memory, metrics, planning, shutdown, states
from worker.broker import Consumer, Record
from worker.compose import Parts
from worker.core.errors import StoreUnavailable
from worker.health import HealthServer
from worker.intake import Message
from worker.reading import Reader, Unreadable
from worker.shutdown import StopRequest
from worker.stall import Deadline, Stall, StalledTooLong, error_kind, error_site, error_sqlstate
from worker.store import db, reports
from worker.store.faults import is_outage
from worker.verification import wiring as verification
from worker.watchdog import Watchdog

log = structlog.get_logger("oubli.worker")

BUSY_POLL_SECONDS = 0.005  # the consume timeout while calls or a relay batch are in flight
GAUGE_SECONDS = 15.0
# close() spends at most drain_seconds + this. The chart's grace period adds shutdownMarginSeconds (>= 15)
# to drain_seconds: keep this below it.
SHUTDOWN_MARGIN_SECONDS = 10.0
# Of that margin, kept for committing offsets, leaving the group and aborting an open transaction
# (broker calls with their own short timeouts) after the relay had its turn.
LEAVE_RESERVE_SECONDS = 3.0
# A turn running longer than this (or two polls) is stuck, on a silent store or broker (every store statement ends
# within 15 s): /readyz says so then, /healthz after a minute, and the watchdog (worker.watchdog) ends the process
# after store_outage_exit_seconds.
READY_TURN_SECONDS = 20.0


class Loop:
    def __init__(self, parts: Parts, consumer: Consumer, *, serve_http: bool = False,
                 stop: StopRequest | None = None) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.clock = parts.clock
        self.engine, self.store, self.crash = parts.engine, parts.store, parts.crash
        self.connectors, self.exports = parts.connectors, parts.exports
        self.foresight = planning.Gauges(parts.connectors, planning.keeps(parts.settings))
        self.intake, self.executor, self.relay = parts.intake, parts.executor, parts.relay
        self.consumer = consumer
        self.stop = stop or StopRequest()
        self.last_loop = time.monotonic()
        # One stall for the store (a probe decides when it is back), one for the record intake could not
        # record (it may fail for its own reason while the store answers), one per other step.
        self.store_stall = self._stall()
        self.intake_stall = self._stall()
        self.step_stalls: dict[str, Stall] = {}
        self.intake_held = False
        self.last_commit = time.monotonic()
        self.last_gauges = 0.0
        self.trimmer = memory.Trimmer()
        self.offsets_pending = False
        self.offsets_unconfirmed = False  # a background commit was sent since the last one waited for
        self.assigned: list[TopicPartition] = []
        self.reader = Reader(consumer, chunk=self.settings.worker.batch_size)
        self.timed = StepClock()
        worker = self.settings.worker
        self.health = (HealthServer(worker.http_host, worker.http_port, live=self._live, ready=self._ready)
                       if serve_http else None)

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        with shutdown.listening(self.stop):
            self._run()

    @property
    def stopping(self) -> bool:
        return self.stop.asked

    def _run(self) -> None:
        worker = self.settings.worker
        # A turn that never ends (a store gone silent) is past every other bound: that thread ends the process.
        watchdog = Watchdog(worker.store_outage_exit_seconds + worker.poll_seconds, last_turn=lambda: self.last_loop,
                            stopping=lambda: self.stopping, shutdown=worker.drain_seconds + SHUTDOWN_MARGIN_SECONDS + 5)
        try:
            self.start()
            watchdog.start()
            while not self.stopping:
                self.run_once()
        finally:
            self.stop.ask()  # however the loop ended (StalledTooLong too): the watchdog keeps to close's budget
            try:
                self.close()
            finally:
                watchdog.stop()

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
        self._consume()
        # Results are recorded right before the claim, so a slot a result frees is taken again at once; the relay
        # then sends what intake, the results and the claim wrote. A relay turn between the two (the receipts
        # leaving while the claim ran) held every freed slot for its store and broker round trips.
        with self.timed("results"):
            self._guarded("executor", self.executor.record)
        with self.timed("claim"):
            self._guarded("executor", self.executor.launch)
        with self.timed("relay"):
            self._guarded("relay", self.relay.tick)
        # Calls still running, not calls whose results wait to be recorded: during a store outage those wait
        # for as long as it lasts, and counting them would show connectors stuck that have long returned.
        metrics.IN_FLIGHT.set(self.executor.calls_running())
        self._maybe_commit()
        if time.monotonic() - self.last_gauges >= GAUGE_SECONDS:
            self._guarded("gauges", self._refresh_gauges)
        self.trimmer.maybe_trim()

    def _refresh_gauges(self) -> None:
        self.last_gauges = time.monotonic()
        by_status, overdue, ages = reports.request_gauges(self.engine, self.clock())
        for status in states.RequestStatus:
            metrics.REQUESTS.labels(status.value).set(by_status.get(status.value, 0))
        metrics.OVERDUE.set(overdue)
        for bucket, count in ages.items():
            metrics.OPEN_BY_AGE.labels(bucket).set(count)
        metrics.OPERATOR_ACTIONS.set(reports.operator_actions(self.engine))
        pending, oldest = reports.outbox_backlog(self.engine, self.clock())
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_OLDEST.set(oldest)
        verification.refresh_gauges(self.engine, self.settings)  # the last resurrection scan's figures
        self.foresight.refresh(self.engine, self.clock())  # deadlines at risk at limited systems (every 5 min)
        for partition in self.assigned:
            low, high = self.consumer.get_watermark_offsets(partition, cached=True) or (0, 0)
            position = self.consumer.position([partition])[0].offset
            metrics.CONSUMER_LAG.labels(str(partition.partition)).set(max(high - max(position, low), 0))

    def close(self) -> None:
        """Drains in-flight calls, publishes what is left, commits and leaves the group: all within one budget.

        ``drain_seconds`` for the calls in flight, and ``SHUTDOWN_MARGIN_SECONDS`` more for everything else,
        whatever the broker does (every step takes its timeout from the same deadline), so that the chart's
        termination grace period (drain + a margin above this one) always covers it.
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
        left_running = self.executor.busy()
        self.parts.close()
        if self.health is not None:
            self.health.stop()
        log.info("worker_stopped", left_running=left_running, budget_left=round(budget.left(), 1))

    # --- consuming -------------------------------------------------------------------------

    def _consume(self) -> None:
        with self.timed("poll"):
            records = self._poll()
        if records:
            with self.timed("intake"):
                self._record(records)

    def _poll(self) -> list[Record]:
        self._hold_intake(self.store_stall.active or not self.intake_stall.due(time.monotonic()))
        size = self.settings.worker.batch_size
        # consume() returns early only with a full batch: it would hold a lone command for the whole timeout.
        # So what is already fetched is taken without waiting, and otherwise poll() waits for the first record.
        batch = self.consumer.consume(num_messages=size, timeout=0)
        if not batch:
            first = self.consumer.poll(self._wait_for_work())
            if first is not None:
                batch = [first]
                if size > 1:
                    batch += self.consumer.consume(num_messages=size - 1, timeout=0)
        return self.reader.take(batch, held=self.intake_held)

    def _wait_for_work(self) -> float:
        """With no command in hand: waits for calls in flight to end, or else for the relay's batch to be
        acknowledged; returns how long ``poll`` may then wait for a command.

        With calls in flight, the turn that records their results is a request's latency: the loop waits
        here for some of them to return (``Executor.wait_for_calls``, up to ``BUSY_POLL_SECONDS``), and
        ``poll`` then only looks. Otherwise, while a relay batch waits for the broker's acknowledgement, the
        loop waits for that (``Relay.wait``, as long at most), and the next turn's relay commits it: a lone
        request's receipts leave as soon as the broker has them. Calls first: a relay batch is in flight
        after most busy turns.
        """
        if self.executor.busy():
            self.executor.wait_for_calls(BUSY_POLL_SECONDS)
            return 0
        if self.relay.pending():
            # A batch whose commit is held back waits in the short poll instead: the loop never spins. Guarded as
            # the relay's turns are: the producer's poll runs its callbacks, and a failure there must not stop intake.
            return 0 if self._guarded("relay", lambda: self.relay.wait(BUSY_POLL_SECONDS)) else BUSY_POLL_SECONDS
        return self.settings.worker.poll_seconds

    def _record(self, batch: Sequence[Record]) -> None:
        """Records the batch; acknowledges the recorded prefix; rewinds to the first record not recorded."""
        try:
            outcome = self.intake.handle_batch([_incoming(m) for m in batch], self.clock())
        except Exception as exc:  # noqa: BLE001 - whatever it is, the records must be rewound, not skipped
            self._intake_failed(batch, 0, exc)
            return
        recorded = batch[:len(outcome.results)]
        if recorded:
            self.intake_stall.recovered()
            self.crash.hit(failpoints.AFTER_RECORD)
            last = {(m.topic(), m.partition()): m for m in recorded}  # a partition's offset covers its prefix
            held = self._held_places()
            for place, message in last.items():
                if place not in held:  # revoked in a later poll of this turn: the client refuses its offset, and
                    continue  # the new owner reads the record again (a duplicate at worst)
                if isinstance(message, Unreadable):  # no client message to store: its place, past it
                    self.consumer.store_offsets(offsets=[
                        TopicPartition(message.topic(), message.partition(), message.offset() + 1)])
                    self.reader.dead_lettered((message.topic(), message.partition()), message.offset() + 1)
                else:
                    self.consumer.store_offsets(message)
            self.offsets_pending = True
            self.executor.nudge()  # new tasks are due: claim on this turn, not after the idle pause
            for result in outcome.results:
                metrics.COMMANDS.labels(result.value).inc()
        if outcome.outage is not None:
            self._intake_failed(batch, len(recorded), outcome.outage)
        elif len(recorded) < len(batch):  # the turn's time ran out: the rest is fetched again, nothing is wrong
            self._rewind(batch, len(recorded))

    def _intake_failed(self, batch: Sequence[Record], first: int, exc: Exception) -> None:
        """Not recorded, so not acknowledged: rewind to ``batch[first]`` and hold intake, for a bounded time.

        A store outage is the expected case. Anything else means intake broke its contract (it dead-letters
        every bad input itself), so a record met a bug: it is not skipped, since only the DLQ may take a record
        out of the stream, but tried again the same bounded way; past ``store_outage_exit_seconds`` the worker
        exits (``_check_store``), with nothing lost.
        """
        now = time.monotonic()
        wait = self.intake_stall.failed(now)
        kind = error_kind(exc)
        source = _source(batch[first])
        if isinstance(exc, StoreUnavailable) or is_outage(exc):
            self.store_stall.failed(now)
            metrics.STORE_ERRORS.labels("intake", kind).inc()
            log.error("store_unavailable", during="intake", source=source, error_type=kind,
                      sqlstate=error_sqlstate(exc), retry_in=round(wait, 1))
        else:
            metrics.LOOP_ERRORS.labels("intake", kind).inc()
            log.error("intake_failed", source=source, error_type=kind, site=error_site(exc), retry_in=round(wait, 1))
        self._rewind(batch, first)
        self._hold_intake(True)

    def _rewind(self, batch: Sequence[Record], first: int) -> None:
        """Every partition of the unrecorded rest, from ``batch[first]`` on, goes back to its first unrecorded
        record."""
        rewind: dict[tuple[str, int], int] = {}
        held = self._held_places()
        for message in batch[first:]:
            place = (str(message.topic()), message.partition() or 0)
            if place in held:  # a revoked partition is not ours to seek: its new owner starts at the committed offset
                rewind.setdefault(place, message.offset() or 0)
        for (topic, partition), offset in rewind.items():
            self.reader.seek(topic, partition, offset)
            self.reader.rewound((topic, partition))

    def _hold_intake(self, hold: bool) -> None:
        if hold:
            # Every turn, not once: partitions assigned while intake is held arrive unpaused.
            self.consumer.pause(self.consumer.assignment())
        elif self.intake_held:
            self.consumer.resume(self.consumer.assignment())
        self.intake_held = hold

    def _maybe_commit(self) -> None:
        if self.offsets_pending and time.monotonic() - self.last_commit >= self.settings.kafka.commit_interval_seconds:
            self._commit(asynchronous=True)

    def _commit(self, *, asynchronous: bool = False) -> None:
        """Commits the stored offsets, all of them recorded commands.

        The periodic commit goes in the background: waited for, its broker round trip (about 10 ms) sat in
        a lone request's path. Its failure is logged by the client's ``on_commit`` and changes nothing: the
        offsets stay stored, and the next commit carries them. The commits that hand partitions over (on
        revoke and on close) wait, and run whenever a background one was sent since the last that waited.
        """
        if not (self.offsets_pending or (self.offsets_unconfirmed and not asynchronous)):
            return
        try:
            if asynchronous:
                self.consumer.commit(asynchronous=True)
            else:
                self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset_commit_failed", code=exc.args[0].name())
                return
        self.offsets_pending = False
        self.offsets_unconfirmed = asynchronous
        self.last_commit = time.monotonic()

    def _held_places(self) -> set[tuple[str, int]]:
        """(topic, partition) of every partition this consumer holds now."""
        return {(p.topic, p.partition) for p in self.assigned}

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # cooperative-sticky: the callback names only the partitions added, often none, never the whole set.
        held = self._held_places()
        self.assigned += [p for p in partitions if (p.topic, p.partition) not in held]
        log.info("partitions_assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Everything consumed so far is in the store: commit it before another worker takes over.
        self._commit()
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned = [p for p in self.assigned if (p.topic, p.partition) not in gone]
        for where in gone:
            self.reader.revoked(where)
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

        Readiness alone does not move a consumer's partitions: a worker cut off from its store would keep them
        paused while healthy peers could take them. So past the limit it exits non-zero (``run`` leaves the
        group cleanly, the partitions move, the pod restarts); no offset moved past an unrecorded command.
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
                db.ping(self.engine)
            except Exception as exc:  # noqa: BLE001 - whatever the probe meets, the store is not back
                self.store_stall.failed(now)
                metrics.STORE_ERRORS.labels("probe", error_kind(exc)).inc()
                return
            log.info("store_available", after_seconds=round(self.store_stall.lasted(now), 1))
            self.store_stall.recovered()
            self.intake_stall.retry_at = now  # the record intake could not write is tried at once

    def _guarded(self, name: str, step: Callable[[], Any], *, gated: bool = True) -> Any:
        """Runs one store-backed step of the loop and returns what it returns (None when it failed or was held).
        No failure of it stops the worker but a fatal Kafka one.

        A store outage holds every store step until the probe in ``_check_store`` passes. Any other error is
        logged by type and place (never its message, which may quote personal data), counted in
        ``oubli_loop_errors_total``, and the step alone is tried again with backoff while readiness is down.
        ``gated=False`` tries once whatever the backoff says (on shutdown).
        """
        stall = self.step_stalls.setdefault(name, self._stall())
        now = time.monotonic()
        if gated and (self.store_stall.active or not stall.due(now)):
            return None
        try:
            result = step()
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
            return None
        stall.recovered()
        return result

    def _live(self) -> bool:
        return time.monotonic() - self.last_loop < 60

    def _turning(self) -> bool:
        """A turn began lately. A store gone silent raises nothing (the loop waits in a read), so this alone says it:
        ready no more once a turn has lasted longer than any the loop makes while it works (a poll at most)."""
        return time.monotonic() - self.last_loop < max(READY_TURN_SECONDS, 2 * self.settings.worker.poll_seconds)

    def _ready(self) -> bool:
        """Not ready while the store is out, intake is held on a record, a step that does the work keeps failing
        (the gauges, read every 15 s, may miss a turn during a rebalance: that is no reason to drop readiness), or
        abandoned calls that never returned hold every slot."""
        stalled = self.store_stall.active or self.intake_stall.active or self.executor.capacity_lost() or any(
            stall.active for name, stall in self.step_stalls.items() if name != "gauges")
        return self._turning() and not stalled and not self.stopping


def _source(message: Record) -> str:
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def _incoming(message: Record) -> Message:
    if isinstance(message, Unreadable):
        return Message(value=None, key=None, headers=[], source=_source(message), unreadable=message.code)
    try:
        received = message.headers() or []
        pairs = received.items() if isinstance(received, dict) else received
        headers = [(str(k), v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs]
    except Exception as exc:  # noqa: BLE001 - e.g. a header key that is not UTF-8: the client cannot decode it
        # Without this the whole batch would be rewound onto the same record forever. Intake then records or
        # dead-letters the value like any other (a signed command without its signature header: bad_signature).
        log.warning("headers_unreadable", source=_source(message), error_type=type(exc).__name__)
        headers = []
    value, key = message.value(), message.key()
    return Message(value=value.encode() if isinstance(value, str) else value,
                   key=key.encode() if isinstance(key, str) else key, headers=headers, source=_source(message))


class StepClock:
    """Adds a step's wall time, and the loop thread's CPU time within it, to ``oubli_loop_seconds_total``."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[Any, Any]] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            counters = self.counters.get(step)
            if counters is None:
                counters = self.counters[step] = (metrics.LOOP_SECONDS.labels(step, "wall"),
                                                  metrics.LOOP_SECONDS.labels(step, "cpu"))
            counters[0].inc(time.perf_counter() - wall)
            counters[1].inc(time.thread_time() - cpu)
