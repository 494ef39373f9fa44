"""A command on a partition added to the commands topic while the worker runs is taken in within seconds.

Operators add partitions to scale out (``kafka-topics --alter --partitions``). The consumer learns of them from the
topic's metadata, which librdkafka refreshes every 5 minutes by default: a command keyed to a new partition used
to wait that long (298 s measured) before any worker was assigned it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

from devkit.pipeline import raw_settings, run_until, settings_from, subject_command
from worker import kafka
from worker.app import Worker
from worker.store.repository import NotFound


def test_a_command_on_a_partition_added_while_running_completes_in_seconds(
    tmp_path: Path, kafka_bootstrap: str,
) -> None:
    url = f"sqlite:///{tmp_path / 'oubli.db'}"
    systems = {"alpha": {"connector": "devkit.fakes", "settings": {"url": f"sqlite:///{tmp_path / 'fx.db'}"}}}
    settings = settings_from(raw_settings(store_url=url, bootstrap=kafka_bootstrap, systems=systems))
    topics = settings.kafka.topics
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    try:
        run_until(worker, lambda: len(worker.assigned) == kafka.COMMAND_PARTITIONS, timeout=30)
        grown = kafka.COMMAND_PARTITIONS + 2
        admin = kafka.admin(settings.kafka)  # held: a collected client cancels its futures
        admin.create_partitions([NewPartitions(topics.commands, grown)])[topics.commands].result()
        command = subject_command()
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.commands, key=command["subject"]["customer_id"].encode(),
                         value=json.dumps(command).encode(), partition=grown - 1)
        assert producer.flush(30) == 0
        started = time.monotonic()

        def completed() -> bool:
            try:
                return worker.store.receipt(command["request_id"])["status"] == "completed"
            except NotFound:  # not recorded yet
                return False

        run_until(worker, completed, timeout=45)
        assert time.monotonic() - started < 30
    finally:
        worker.close()
