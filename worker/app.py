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
from worker.shutdown import StopRequest


class Worker(Loop):
    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow, migrate: bool = False,
                 serve_http: bool = True, stop: StopRequest | None = None) -> None:
        """``stop``: the request a signal handler installed before this sets (``worker.shutdown``); a stop asked
        for while the store is waited for raises ``StoppedBeforeStart``."""
        stop = stop or StopRequest()
        parts = compose.build(settings, clock, migrate=migrate, wait_for_store=stop)
        super().__init__(parts, Consumer(kafka.consumer_config(settings.kafka)), serve_http=serve_http, stop=stop)
