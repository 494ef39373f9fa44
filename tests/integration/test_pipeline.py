"""The pipeline end to end on the real broker and PostgreSQL, with scriptable connectors."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from devkit import fakes
from devkit.pipeline import Receipts, raw_settings, run_until, settings_from, subject_command
from worker.app import Worker
from worker.config import Settings
from worker.store.schema import tasks
from worker.support import publish_command


def fake(url: str, **settings: Any) -> dict[str, Any]:
    return {"connector": "devkit.fakes", "concurrency": 2, "max_attempts": 4, "settings": {"url": url, **settings}}


@pytest.fixture
def make_worker(pg_url: str, kafka_bootstrap: str) -> Iterator[Any]:
    started: list[tuple[Worker, Receipts]] = []

    def build(systems: dict[str, Any], **extra: Any) -> tuple[Worker, Receipts, Settings]:
        settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems, **extra))
        worker = Worker(settings, migrate=True, serve_http=False)
        worker.start()
        receipts = Receipts(settings)
        started.append((worker, receipts))
        return worker, receipts, settings

    yield build
    for worker, receipts in started:
        receipts.close()
        worker.close()


def test_erasure_is_accepted_then_completed_once_every_system_confirmed(make_worker: Any, pg_url: str) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url), "beta": fake(pg_url, polls=2)})
    command = subject_command()
    publish_command(settings.kafka, command)
    done = receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)

    statuses = [r["status"] for r in receipts.of(command["request_id"])]
    assert statuses[0] == "accepted"
    assert statuses.index("completed") == len(statuses) - 1
    assert {s["system"]: (s["state"], s["outcome"]) for s in done["systems"]} == {
        "alpha": ("confirmed", "erased"), "beta": ("confirmed", "requested")}
    assert done["completed_at"] is not None and done["subject_ref"].startswith("hmac-sha256:")
    assert fakes.effect_count(pg_url, command["request_id"], "erase") == 2


def test_same_command_twice_gives_one_request_one_effect_one_terminal_receipt(make_worker: Any, pg_url: str) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url)})
    command = subject_command()
    publish_command(settings.kafka, command)
    publish_command(settings.kafka, command)
    receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)
    publish_command(settings.kafka, command)  # again, after completion: a fresh copy at most
    run_until(worker, lambda: worker.store.outbox.batch(1) == [] and _consumed_all(worker, settings), timeout=30)
    receipts.drain(1.0)

    assert fakes.effect_count(pg_url, command["request_id"], "erase") == 1
    terminal = {json.dumps(r, sort_keys=True) for r in receipts.of(command["request_id"]) if r["status"] == "completed"}
    assert len(terminal) == 1
    with worker.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM requests WHERE request_id = :r"),
                             {"r": command["request_id"]}).scalar_one()
    assert count == 1


def test_conflicting_duplicate_goes_to_the_dlq_and_never_touches_the_receipt(make_worker: Any, pg_url: str) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url)})
    command = subject_command()
    publish_command(settings.kafka, command)
    done = receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)
    changed = {**command, "reason": "a different body"}
    publish_command(settings.kafka, changed)
    dlq = _read_dlq(worker, settings, expected=1)

    assert dlq[0]["headers"]["x-oubli-error-code"] == b"conflicting_duplicate"
    receipts.drain(1.0)
    assert receipts.latest(command["request_id"]) == done


@pytest.mark.parametrize(("raw", "code", "receipted"), [
    (b"{not json", "invalid_json", False),
    (json.dumps({"schema_version": 1, "request_id": "bad-schema-1", "kind": "erasure"}).encode(),
     "schema_violation", True),
    (json.dumps({"schema_version": 2, "request_id": "bad-version-1"}).encode(), "unsupported_schema_version", True),
    (b"x" * (64 * 1024 + 1), "too_large", False),
])
def test_bad_input_is_rejected_dead_lettered_and_the_consumer_goes_on(
    make_worker: Any, pg_url: str, raw: bytes, code: str, receipted: bool,
) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url)})
    suffix = uuid.uuid4().hex[:6]
    raw = raw.replace(b"-1\"", f"-{suffix}\"".encode())
    publish_command(settings.kafka, {}, raw=raw, key=b"C-bad")
    good = subject_command(customer_id="C-bad")  # same key, so same partition, after the bad one
    publish_command(settings.kafka, good)
    receipts.wait(good["request_id"], {"completed"}, step=worker.run_once)

    dlq = _read_dlq(worker, settings, expected=1)
    headers = dlq[0]["headers"]
    assert headers["x-oubli-error-code"] == code.encode()
    assert headers["x-oubli-error-message"]
    assert headers["x-oubli-source"].startswith(settings.kafka.topics.commands.encode())
    assert dlq[0]["value"] == raw
    rejected = [r for r in receipts.all if r["status"] == "rejected"]
    if receipted:
        assert [r["error"]["code"] for r in rejected] == [code]
        assert rejected[0]["request_id"].endswith(suffix)
    else:
        assert rejected == []
    run_until(worker, lambda: _consumed_all(worker, settings), timeout=20)


def test_transient_failures_are_retried_with_backoff_until_confirmed(make_worker: Any, pg_url: str) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url, transient_failures=2)})
    command = subject_command()
    publish_command(settings.kafka, command)
    done = receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)

    assert done["systems"][0]["attempts"] == 3
    retrying = [r for r in receipts.of(command["request_id"]) if r["systems"][0]["state"] == "retrying"]
    assert retrying and retrying[0]["systems"][0]["error"]["code"] == "retryable"
    assert retrying[0]["systems"][0]["next_attempt_at"] is not None
    _, _, audit = worker.store.get(command["request_id"])
    assert [e["to_state"] for e in audit if e["system"] == "alpha" and e["action"] == "fail"] == ["retrying"] * 2


def test_permanent_failure_needs_a_person_who_can_retry_or_confirm(make_worker: Any, pg_url: str) -> None:
    worker, receipts, settings = make_worker({"alpha": fake(pg_url, permanent=True), "beta": fake(pg_url)})
    command = subject_command()
    request_id = command["request_id"]
    publish_command(settings.kafka, command)
    stuck = receipts.wait(request_id, {"action_required"}, step=worker.run_once)
    alpha = next(s for s in stuck["systems"] if s["system"] == "alpha")
    assert (alpha["state"], alpha["attempts"], alpha["error"]["code"]) == ("failed", 1, "permanent")

    assert worker.store.operator_retry(request_id, None, actor="sre-on-call", now=worker.clock()) == ["alpha"]
    # Not the latest receipt: the one from before the retry is action_required too, and a confirmation met the
    # retried call still running (refused by design). The store says when the retry has failed again.
    deadline = time.monotonic() + 60
    while _state_of(worker, request_id, "alpha") != "failed":
        assert time.monotonic() < deadline, "the retried call did not fail again"
        worker.run_once()
    worker.store.operator_confirm(request_id, "alpha", actor="dpo@retailer", note="vendor confirmed by letter",
                                  now=worker.clock())
    done = receipts.wait(request_id, {"completed"}, step=worker.run_once)
    alpha = next(s for s in done["systems"] if s["system"] == "alpha")
    assert (alpha["outcome"], alpha["confirmed_by"]) == ("manually_confirmed", "dpo@retailer")
    _, _, audit = worker.store.get(request_id)
    manual = [e for e in audit if e["action"] == "operatorconfirm"]
    assert manual[0]["actor"] == "dpo@retailer" and manual[0]["detail"] == "vendor confirmed by letter"


def _consumed_all(worker: Worker, settings: Settings) -> bool:
    worker._commit()
    topic = settings.kafka.topics.commands
    partitions = [TopicPartition(topic, p) for p in range(6)]
    committed = worker.consumer.committed(partitions, timeout=5)
    for tp in committed:
        _, high = worker.consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
        if high > 0 and tp.offset < high:
            return False
    return True


def _read_dlq(worker: Worker, settings: Settings, expected: int) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"dlq-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.kafka.topics.dlq])
    found: list[dict[str, Any]] = []
    try:
        for _ in range(400):
            worker.run_once()
            message = consumer.poll(0.05)
            if message is not None and not message.error():
                found.append({"value": message.value(), "key": message.key(), "headers": dict(message.headers())})
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    assert len(found) == expected
    return found


def test_probes_and_metrics_are_served(pg_url: str, kafka_bootstrap: str) -> None:
    import urllib.request

    settings = settings_from(raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={"alpha": fake(pg_url)}))
    worker = Worker(settings, migrate=True, serve_http=True)
    worker.start()
    receipts = Receipts(settings)
    try:
        command = subject_command()
        publish_command(settings.kafka, command)
        receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)
        worker.last_gauges = 0.0
        worker.run_once()
        base = f"http://127.0.0.1:{worker.health.port}" if worker.health else ""
        for probe in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + probe, timeout=5) as response:  # noqa: S310 - loopback
                assert response.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        assert 'oubli_commands_total{result="accepted"}' in text
        assert 'oubli_system_outcomes_total{outcome="erased",system="alpha"}' in text
        assert 'oubli_requests{status="completed"}' in text
        assert "oubli_consumer_lag" in text and "oubli_overdue_requests" in text
        assert re.search(r"^oubli_outbox_pending \d", text, re.M) and "oubli_outbox_oldest_seconds" in text
        counts = re.findall(r'^oubli_request_seconds_count\{kind="erasure"\} (\S+)$', text, re.M)
        assert counts and float(counts[0]) >= 1
    finally:
        receipts.close()
        worker.close()


def _state_of(worker: Any, request_id: str, system: str) -> str:
    with worker.engine.connect() as conn:
        return str(conn.execute(sa.select(tasks.c.state).where(tasks.c.request_id == request_id,
                                                                tasks.c.system == system)).scalar_one())
