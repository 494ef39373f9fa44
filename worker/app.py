"""A worker as the ``oubli worker`` command runs it: the parts from ``worker.compose.build``, a Kafka
consumer (``worker.kafka.consumer_config``) and the loop of ``worker.loop`` over them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from confluent_kafka import Consumer

from worker import compose, kafka
from worker.config import Settings
from worker.core.timefmt import utcnow
from worker.loop import Loop


class Worker(Loop):
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow, migrate: bool = False,
                 serve_http: bool = True) -> None:
        parts = compose.build(settings, clock, migrate=migrate, wait_for_store=True)
        super().__init__(parts, Consumer(kafka.consumer_config(settings.kafka)), serve_http=serve_http)
