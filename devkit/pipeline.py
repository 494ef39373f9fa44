"""Helpers for tests that run the whole pipeline on the real broker: settings, workers, receipts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from devkit import services
from worker import config, kafka, messages
from worker.app import Worker
from worker.config import Settings
from worker.store.repository import Store

SUBJECT_KEY = "test-subject-key-0123456789abcdef"


def raw_settings(*, store_url: str, bootstrap: str, systems: dict[str, Any], **extra: Any) -> dict[str, Any]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    raw: dict[str, Any] = {
        "store_url": store_url,
        "subject_key": SUBJECT_KEY,
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"{prefix}-workers",
            "session_timeout_ms": 6000,
            "commit_interval_seconds": 0.2,
            "topics": {"commands": f"{prefix}.commands", "receipts": f"{prefix}.receipts", "dlq": f"{prefix}.dlq"},
        },
        "systems": systems,
        "retry": {"base_seconds": 0.05, "max_seconds": 0.5},
        "worker": {"poll_seconds": 0.05, "lease_seconds": 5, "drain_seconds": 5, "http_port": 0,
                   "http_host": "127.0.0.1"},
    }
    raw.update(extra)
    return raw


def settings_from(raw: dict[str, Any]) -> Settings:
    settings = config.build(raw, env={})
    kafka.ensure_topics(settings.kafka)
    return settings


class Receipts:
    """Reads the receipts topic from the start; validates every record against receipt.v1."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"watch-{uuid.uuid4()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "isolation.level": "read_committed",  # the relay publishes in transactions; aborted ones never count
        })
        self.consumer.subscribe([settings.kafka.topics.receipts])
        self.all: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.transient_errors: list[str] = []

    def drain(self, timeout: float = 0.1) -> None:
        while (message := self.consumer.poll(timeout)) is not None:
            error = message.error()
            if error is not None:
                # Like the worker: only a fatal error ends the watch. The rest are librdkafka telling us what it
                # retries by itself: a topic not yet in this consumer's metadata, or a coordinator that moved
                # while a broker restarted (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, transport errors).
                assert not error.fatal(), error
                self.transient_errors.append(error.name())
                continue
            value = message.value()
            receipt = json.loads(value)
            assert messages.schema_errors("receipt.v1", receipt) == [], receipt
            assert message.key() == receipt["request_id"].encode()
            self.raw.append(value)
            self.all.append(receipt)
            timeout = 0.01

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.all if r["request_id"] == request_id]

    def latest(self, request_id: str) -> dict[str, Any] | None:
        mine = self.of(request_id)
        return mine[-1] if mine else None

    def wait(self, request_id: str, statuses: set[str], *, timeout: float = 60.0,
             step: Callable[[], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if step is not None:
                step()
            self.drain(0.05 if step is not None else 0.2)
            latest = self.latest(request_id)
            if latest is not None and latest["status"] in statuses:
                return latest
        raise AssertionError(f"{request_id} did not reach {statuses}; last: {self.latest(request_id)}")

    def close(self) -> None:
        self.consumer.close()


def run_until(worker: Worker, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        if condition():
            return
    raise AssertionError("condition not met in time")


class WorkerProcess:
    """``oubli worker`` in a child process, as production runs it; logs go to a file."""

    def __init__(self, raw: dict[str, Any], directory: Path, name: str = "worker") -> None:
        self.config_path = directory / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> WorkerProcess:
        oubli = str(Path(sys.executable).with_name("oubli"))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own console script
            [oubli, "--config", str(self.config_path), "worker", "--migrate"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env},
        )
        return self

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_logged(self, event: str, timeout: float = 60) -> None:
        """Until the worker's log names ``event`` (for example ``worker_started``)."""
        deadline = time.monotonic() + timeout
        while event not in self.logs():
            assert self.process is not None and self.process.poll() is None, f"the worker exited before {event}"
            assert time.monotonic() < deadline, f"the worker did not log {event} in {timeout} s"
            time.sleep(0.1)


def subject_command(kind: str = "erasure", **overrides: Any) -> dict[str, Any]:
    from worker.support import build_command

    customer = overrides.pop("customer_id", f"C-{uuid.uuid4().hex[:8]}")
    return build_command(
        kind=kind, customer_id=customer, emails=overrides.pop("emails", [f"marie.{customer.lower()}@example.fr"]),
        phones=overrides.pop("phones", ["+33612345678"]), requested_by="test-suite", **overrides,
    )


def record(store: Store, targets: dict[str, int], *, now: datetime | None = None, **command: Any) -> str:
    """Records a command straight into ``store`` as intake would (no broker); returns its request_id.

    ``command`` is passed to ``build_command`` (``kind`` defaults to erasure); ``now`` is the intake time,
    by default the command's ``requested_at``.
    """
    from worker.support import build_command

    body = build_command(**{"kind": "erasure", "requested_by": "test-suite", **command})
    parsed = messages.parse(body, value=b"", signature=None, signing_secret=None, known_systems=frozenset(targets))
    store.record_command(parsed, subject_ref=messages.subject_ref(SUBJECT_KEY.encode(), parsed.customer_id),
                         digest=messages.body_digest(SUBJECT_KEY.encode(), body), targets=targets,
                         now=now or parsed.requested_at)
    return parsed.request_id


class LocalStore:
    """A migrated SQLite store and a config naming it: for CLI tests that need no broker."""

    def __init__(self, directory: Path, systems: tuple[str, ...] = ("alpha",)) -> None:
        from worker import states
        from worker.config import Topics
        from worker.store import db

        url = f"sqlite:///{directory / 'store.db'}"
        engine = db.create_engine(url)
        db.migrate(engine)
        self.store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
        self.config = directory / "oubli.yaml"
        self.config.write_text(yaml.safe_dump(raw_settings(store_url=url, bootstrap="127.0.0.1:1", systems={
            system: {"connector": "devkit.fakes", "settings": {"url": url}} for system in systems})))

    def oubli(self, *args: str) -> Any:
        """``oubli --config <this> ARGS`` through click's runner; returns the click Result."""
        from click.testing import CliRunner

        from worker.cli import cli

        return CliRunner().invoke(cli, ["--config", str(self.config), *args], catch_exceptions=False)


def personal_strings(command: dict[str, Any]) -> list[str]:
    subject = command["subject"]
    values = [subject["customer_id"], *subject.get("emails", []), *subject.get("phones", [])]
    for ids in subject.get("identifiers", {}).values():
        values.extend(ids)
    return values


def iter_tables(engine: Any) -> Iterator[tuple[str, list[Any]]]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            yield table, [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]  # noqa: S608


def read_topic(settings: Settings, topic: str) -> list[Message]:
    """Every committed record of a topic (read_committed), partition by partition, in log order."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"read-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Message] = []
        ended: set[int] = set()
        deadline = time.monotonic() + 30
        while len(ended) < len(partitions):
            assert time.monotonic() < deadline, f"{topic} was not read to its end"
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                ended.add(message.partition() or 0)
                continue
            records.append(message)
        return records
    finally:
        consumer.close()


@contextmanager
def export_worker(systems: dict[str, Any], *, store_url: str, bootstrap: str,
                  bucket: str) -> Iterator[tuple[Worker, Receipts, Settings]]:
    """A started in-process worker with exports to ``bucket`` on the local S3, and a receipt watcher."""
    raw = raw_settings(
        store_url=store_url, bootstrap=bootstrap, systems=systems, export={"bucket": bucket},
        s3={"endpoint_url": services.S3_ENDPOINT, "access_key_id": "testing", "secret_access_key": "testing"},
    )
    settings = settings_from(raw)
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        yield worker, receipts, settings
    finally:
        receipts.close()
        worker.close()
