"""Deletes the Kafka topics a test created, once the test is over.

Each pipeline test makes three topics of six partitions, and nothing deleted them: one run of the
suite left about a thousand topics on the shared broker, and a stack kept up across runs (as `make
test` leaves it) piled them up until the broker, with its 512 MB heap, ran out of memory. A broker
holding thousands of partitions is also slower to answer every test that follows.

Only topics this process asked the shared broker to create, and that it did create, are deleted.
Topics that existed before, another process's topics on a shared stack (a demo, a benchmark, a second
developer), and topics a worker subprocess creates are left alone. A test's private broker is thrown
away with its data directory, so its topics need nothing.
Deletion is asynchronous: a test's teardown sends the request and moves on, and the session waits for
the answers once, at the end.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

DELETE_TIMEOUT_SECONDS = 30.0


class TopicJanitor:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._lock = threading.Lock()
        self._created: set[str] = set()  # on the shared broker, since the last sweep
        self._pending: list[concurrent.futures.Future[Any]] = []
        self._admin: AdminClient | None = None
        self._original_init: Any = None
        self._original_create: Any = None

    def install(self) -> None:
        """Wraps AdminClient so that every topic it creates in this process is recorded."""
        janitor = self
        original_init, original_create = AdminClient.__init__, AdminClient.create_topics
        self._original_init, self._original_create = original_init, original_create

        def init(client: AdminClient, conf: dict[str, Any], **kwargs: Any) -> None:
            original_init(client, conf, **kwargs)
            client._janitor_bootstrap = str(conf.get("bootstrap.servers", ""))  # type: ignore[attr-defined]

        def create_topics(client: AdminClient, new_topics: list[Any], **kwargs: Any) -> Any:
            futures = original_create(client, new_topics, **kwargs)
            if getattr(client, "_janitor_bootstrap", "") == janitor.bootstrap:
                for name, future in futures.items():
                    future.add_done_callback(lambda done, name=name: janitor._created_one(name, done))
            return futures

        AdminClient.__init__ = init  # type: ignore[method-assign]
        AdminClient.create_topics = create_topics  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original_init is not None:
            AdminClient.__init__ = self._original_init  # type: ignore[method-assign]
            AdminClient.create_topics = self._original_create  # type: ignore[method-assign]

    def _created_one(self, name: str, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                self._created.add(name)

    def sweep(self) -> None:
        """Asks the broker to delete the topics created since the last sweep; does not wait."""
        with self._lock:
            created, self._created = self._created, set()
        if not created:
            return
        futures = self._client().delete_topics(sorted(created), operation_timeout=DELETE_TIMEOUT_SECONDS)
        with self._lock:
            self._pending.extend(futures.values())

    def finish(self, timeout: float = DELETE_TIMEOUT_SECONDS) -> list[str]:
        """Sweeps, then waits for every deletion; returns why the ones that failed did, for the report."""
        self.sweep()
        with self._lock:
            pending, self._pending = self._pending, []
        failures = []
        done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        for future in done:
            error = future.exception()
            if error is not None and not _gone_already(error):
                failures.append(str(error))
        if not_done:
            failures.append(f"{len(not_done)} deletions unanswered after {timeout:.0f} s")
        return failures

    def _client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin


def _gone_already(error: BaseException) -> bool:
    """A topic the test deleted itself."""
    if isinstance(error, KafkaException) and error.args:
        return bool(getattr(error.args[0], "name", lambda: "")() == "UNKNOWN_TOPIC_OR_PART")
    return False
