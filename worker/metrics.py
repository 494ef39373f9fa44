"""Every metric name, declared once; code, tests and dashboards use the same strings."""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

# The client library's usual process_* (CPU, memory, file descriptors) and python_* (GC, version) series,
# on our registry: the default one is not what /metrics serves.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)


def _version() -> str:
    try:
        return version("oubli")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = _version()
BUILD_INFO = Info("oubli_build", "The running oubli version and Python (value 1)", registry=REGISTRY)
BUILD_INFO.info({"version": VERSION, "python": platform.python_version()})

COMMANDS = Counter("oubli_commands_total", "Commands consumed, by intake result", ["result"], registry=REGISTRY)
SYSTEM_CALLS = Counter("oubli_system_calls_total", "Connector calls, by system and event", ["system", "event"],
                       registry=REGISTRY)
SYSTEM_OUTCOMES = Counter("oubli_system_outcomes_total", "Confirmations, by system and outcome",
                          ["system", "outcome"], registry=REGISTRY)
RETRIES = Counter("oubli_retries_total", "Retryable failures, by system and code", ["system", "code"],
                  registry=REGISTRY)
# Vendor calls may take minutes (a large export, a slow bulk API): the buckets go to 5 minutes.
CALL_SECONDS = Histogram("oubli_system_call_seconds", "Connector call wall time", ["system"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
REQUESTS = Gauge("oubli_requests", "Requests in the store, by status", ["status"], registry=REGISTRY)
OPEN_BY_AGE = Gauge("oubli_open_requests_by_age", "Open requests by age bucket", ["age"], registry=REGISTRY)
OVERDUE = Gauge("oubli_overdue_requests", "Open requests past their due_at", registry=REGISTRY)
# Foresight (worker/planning.py): what the backlog at rate- and quota-limited systems will do to deadlines.
AT_RISK = Gauge("oubli_requests_at_risk",
                "Open requests projected to be served after their due_at at a rate- or quota-limited system",
                ["system"], registry=REGISTRY)
BACKLOG_DAYS = Gauge("oubli_limited_backlog_days",
                     "Days the waiting tasks of a limited system take at its quota (background: at its share)",
                     ["system", "priority"], registry=REGISTRY)
END_TO_END = Histogram("oubli_request_seconds", "Time from requested_at to a terminal status", ["kind"],
                       buckets=(1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 30 * 86400), registry=REGISTRY)
PUBLISHED = Counter("oubli_outbox_published_total", "Records published from the outbox", ["topic"],
                    registry=REGISTRY)
CONSUMER_LAG = Gauge("oubli_consumer_lag", "Commands not yet consumed, by partition", ["partition"],
                     registry=REGISTRY)
OUTBOX_PENDING = Gauge("oubli_outbox_pending", "Records waiting in the outbox to be published (receipts, DLQ copies)",
                       registry=REGISTRY)
OUTBOX_OLDEST = Gauge("oubli_outbox_oldest_seconds", "Age of the oldest record waiting in the outbox (0 when empty)",
                      registry=REGISTRY)
CALLS_ABANDONED = Gauge("oubli_calls_abandoned",
                        "Connector calls abandoned past worker.call_timeout_seconds that have not returned yet "
                        "(each holds a thread)", registry=REGISTRY)
IN_FLIGHT = Gauge("oubli_calls_in_flight", "Connector calls running now", registry=REGISTRY)
INTAKE_PAUSED = Gauge("oubli_intake_paused",
                      "1 while intake is held: the store is unreachable or a command could not be recorded",
                      registry=REGISTRY)
STORE_OUTAGE = Gauge("oubli_store_outage_seconds",
                     "How long the store has been unreachable from this worker (0 when reachable)", registry=REGISTRY)
STORE_ERRORS = Counter("oubli_store_errors_total", "Store outages seen by the main loop, by step and error type",
                       ["step", "kind"], registry=REGISTRY)
LOOP_ERRORS = Counter("oubli_loop_errors_total",
                      "Unexpected errors in a main-loop step (a bug, or data that breaks it), by step and error type",
                      ["step", "kind"], registry=REGISTRY)
# Where the main loop's time goes. Wall time less the loop thread's CPU is time spent waiting: on the store's
# answers mostly (on the broker in "poll", for the next command), or for the GIL.
LOOP_SECONDS = Counter("oubli_loop_seconds_total",
                       "The main loop's time, by step (poll, intake, results, claim, relay) and clock (wall, or the "
                       "loop thread's cpu)", ["step", "clock"], registry=REGISTRY)



class StoreCounter(Collector):
    """A counter whose total the store keeps, not this process: each refresh sets it whole from a count.

    For what another process does (the CLI's ``oubli confirm`` runs once and exits, never scraped). Every
    worker reports the same fleet-wide total, like the ``oubli_requests`` gauges: aggregate with ``max``, not
    ``sum``. It only grows, since what it counts is never deleted, so ``increase()`` and ``rate()`` work."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], *, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labels = name, documentation, tuple(labels)
        self.totals: dict[tuple[str, ...], int] = {}
        self.lock = threading.Lock()
        registry.register(self)

    def set(self, totals: Mapping[tuple[str, ...], int]) -> None:
        with self.lock:
            self.totals = dict(totals)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        with self.lock:
            for values, total in sorted(self.totals.items()):
                family.add_metric(list(values), total)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labels)


OPERATOR_ACTIONS = StoreCounter("oubli_operator_actions",
                                "Systems confirmed (oubli confirm) or retried (oubli retry) by hand, fleet-wide, "
                                "by system and action", ["system", "action"], registry=REGISTRY)

# oubli web (worker/web): a separate process, so these are on its /metrics, not the worker's.
WEB_REQUESTS = Counter("oubli_web_requests_total", "HTTP requests answered by oubli web, by route and status code",
                       ["route", "status"], registry=REGISTRY)
WEB_CALLBACKS = Counter("oubli_web_deletion_callbacks_total",
                        "Meta data deletion callbacks, by result (started, repeated, no_data, needs_person, "
                        "refused_*, failed)",
                        ["result"], registry=REGISTRY)
# The resurrection scan (`oubli verify`, a CronJob): its own process sets these at the end of a run, and every
# worker sets them from the store's record of the last run, so /metrics shows them between runs.
RESURRECTION_SCANNED = Gauge("oubli_resurrection_scan_scanned",
                             "Rows and objects the last resurrection scan read from the internal systems",
                             registry=REGISTRY)
RESURRECTIONS = Gauge("oubli_resurrection_scan_subjects",
                      "Erased subjects the last resurrection scan found again (each gets a new erasure)",
                      registry=REGISTRY)
RESURRECTION_SCAN_TIME = Gauge("oubli_resurrection_scan_last_timestamp_seconds",
                               "When the last resurrection scan finished (Unix time; 0 before the first)",
                               registry=REGISTRY)
