"""Shared plumbing for the benchmarks: the local stack, fresh schemas, worker processes, receipts.

The benchmarks run from the repository root as plain scripts (``.venv/bin/python bench/x.py``),
so this module puts the root on ``sys.path`` to reach ``devkit.pipeline`` and ``devkit.fakes``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer  # noqa: E402

from devkit import fakes, services  # noqa: E402
from devkit.pipeline import WorkerProcess, raw_settings, settings_from, subject_command  # noqa: E402
from worker import kafka  # noqa: E402
from worker.config import Settings  # noqa: E402

__all__ = [
    "ROOT", "Settings", "WorkerProcess", "fakes", "raw_settings", "settings_from", "subject_command",
    "KAFKA", "PG_URL", "require_stack", "pg_schema", "store_url", "fake_system", "Publisher", "ReceiptWatch",
    "start_workers", "wait_assigned", "stop_workers", "max_overlap", "median", "fmt",
]

KAFKA = services.KAFKA_BOOTSTRAP
PG_URL = services.PG_URL


def require_stack() -> None:
    """Exits with a clear message when Kafka or PostgreSQL is not reachable."""
    pg = urlsplit(PG_URL)
    host, port = KAFKA.split(",")[0].rsplit(":", 1)
    for name, h, p in (("Kafka", host, int(port)), ("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432)):
        try:
            socket.create_connection((h, p), timeout=2).close()
        except OSError:
            sys.exit(f"{name} is not reachable at {h}:{p}; start the stack with `scripts/stack up`")


@contextlib.contextmanager
def pg_schema(prefix: str = "bench", base: str = PG_URL) -> Iterator[str]:
    """A URL on ``base`` whose connections see only a brand-new PostgreSQL schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def store_url(kind: str, directory: Path) -> Iterator[str]:
    """The worker's store: ``pg`` a fresh PostgreSQL schema, anything else a fresh SQLite file."""
    if kind == "pg":
        with pg_schema("bench_store") as url:
            yield url
    else:
        yield f"sqlite:///{directory / f'store-{time.monotonic_ns()}.db'}"


def fake_system(url: str, *, concurrency: int, **settings: Any) -> dict[str, Any]:
    return {"connector": "devkit.fakes", "concurrency": concurrency, "max_attempts": 4,
            "settings": {"url": url, **settings}}


class Publisher:
    """One producer for a whole run, connected up front, so that publishing times no connection set-up."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.kafka.topics.commands
        self.producer = Producer({**kafka.producer_config(settings.kafka), "log_level": 4})
        self.producer.list_topics(self.topic, timeout=10)  # connects and fetches metadata now

    def publish(self, commands: Sequence[dict[str, Any]]) -> float:
        """Publishes and waits for the acks; returns the monotonic time before the first produce."""
        errors: list[Any] = []
        started = time.monotonic()
        for command in commands:
            self.producer.produce(self.topic, key=command["subject"]["customer_id"].encode(),
                                  value=json.dumps(command).encode(),
                                  on_delivery=lambda err, _msg: errors.append(err) if err else None)
            self.producer.poll(0)
        if self.producer.flush(30) or errors:
            raise KafkaException(errors[0] if errors else "commands not acknowledged within 30 s")
        return started


class ReceiptWatch:
    """Reads the receipts topic from the start; remembers when each request was first seen completed.

    Deliberately lighter than ``devkit.pipeline.Receipts`` (no schema validation per record), so that
    the benchmark process takes as little CPU as possible from the worker on a small machine.
    """

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"bench-{uuid.uuid4()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": "read_committed",
        })
        self.consumer.subscribe([settings.kafka.topics.receipts])
        self.status: dict[str, str] = {}
        self.completed_seen: dict[str, float] = {}

    def drain(self, timeout: float = 0.05) -> None:
        while (message := self.consumer.poll(timeout)) is not None:
            timeout = 0.0
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                continue
            receipt = json.loads(message.value())
            request_id, status = receipt["request_id"], receipt["status"]
            self.status[request_id] = status
            if status == "completed":
                self.completed_seen.setdefault(request_id, time.monotonic())

    def wait_completed(self, request_ids: Iterable[str], timeout: float) -> bool:
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain(0.05)
            if wanted <= self.completed_seen.keys():
                return True
        return False

    def close(self) -> None:
        self.consumer.close()


def start_workers(raw: dict[str, Any], directory: Path, count: int, name: str = "worker") -> list[WorkerProcess]:
    workers = [WorkerProcess(raw, directory, f"{name}{i}") for i in range(count)]
    for worker in workers:
        worker.start()
    return workers


def wait_assigned(workers: Sequence[WorkerProcess], timeout: float = 30.0) -> bool:
    """True once every worker's log shows a non-empty partition assignment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_assigned(w.logs()) for w in workers):
            return True
        for w in workers:
            if w.process is not None and w.process.poll() is not None:
                sys.exit(f"{w.log_path.name} exited with {w.process.returncode}:\n{w.logs()[-3000:]}")
        time.sleep(0.2)
    return False


def _assigned(logs: str) -> bool:
    for line in logs.splitlines():
        if '"partitions_assigned"' in line:
            with contextlib.suppress(ValueError):
                if json.loads(line).get("partitions"):
                    return True
    return False


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.terminate()
    for worker in workers:
        try:
            if worker.process is not None:
                worker.process.wait(30)
        except Exception:  # noqa: BLE001 - never leave a worker behind
            worker.kill()


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    spans = list(intervals)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # ends sort first on ties
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(seconds: float) -> str:
    return f"{seconds:.3f}s"
