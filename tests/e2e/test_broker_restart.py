"""Nothing lost across a broker crash: the worker rides it out and every request completes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import fakes, services
from devkit.pipeline import Receipts, raw_settings, settings_from, subject_command
from tests.private_kafka import LIBS, ROOT, PrivateKafka
from worker.app import Worker
from worker.support import publish_command


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    services.require_kafka()  # the shared broker's jars and Java are what this one runs on
    if not any(LIBS.glob("kafka_2.13-*.jar")):  # a checkout that reuses another checkout's broker
        subprocess.run([str(ROOT / "scripts" / "stack"), "jars"], check=True)  # noqa: S603
    broker = PrivateKafka(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_a_broker_crash_loses_nothing(private_kafka: PrivateKafka, pg_url: str) -> None:
    systems = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=private_kafka.bootstrap, systems=systems))
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        commands = [subject_command() for _ in range(4)]
        for command in commands:
            publish_command(settings.kafka, command)
        private_kafka.kill()  # acknowledged commands, some not yet consumed; receipts not yet published
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            worker.run_once()  # the loop keeps turning without its broker
        private_kafka.start()
        for command in commands:
            receipts.wait(command["request_id"], {"completed"}, step=worker.run_once, timeout=120)
    finally:
        receipts.close()
        worker.close()
    for command in commands:
        assert fakes.effect_count(pg_url, command["request_id"], "erase") == 1
