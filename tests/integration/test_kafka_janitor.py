"""The suite deletes the topics its tests create, and only those (tests/kafka_janitor.py)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kafka_janitor import TopicJanitor


def _topics(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=10).topics)


def test_the_janitor_deletes_the_topics_created_while_it_watched_and_nothing_else(kafka_bootstrap: str) -> None:
    prefix = f"janitor-{uuid.uuid4().hex[:10]}"
    earlier, made = f"{prefix}.earlier", f"{prefix}.made"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(earlier, 1, 1)])[earlier].result()

    janitor = TopicJanitor(kafka_bootstrap)
    janitor.install()
    try:
        watched = AdminClient({"bootstrap.servers": kafka_bootstrap})
        watched.create_topics([NewTopic(made, 2, 1)])[made].result()
        # A topic that already existed is not this client's to delete, even when it asked to create it.
        with pytest.raises(KafkaException):
            watched.create_topics([NewTopic(earlier, 1, 1)])[earlier].result()
        assert made in _topics(admin)
        assert janitor.finish() == []
    finally:
        janitor.uninstall()

    deadline = time.monotonic() + 15
    while made in _topics(admin) and time.monotonic() < deadline:
        time.sleep(0.2)
    remaining = _topics(admin)
    assert made not in remaining
    assert earlier in remaining
