"""Safety nets: log redaction, and a config that refuses what would break the invariants."""

from __future__ import annotations

import io
import json
import random
import uuid
from pathlib import Path

import pytest
import structlog

from worker import config, logs
from worker.core.errors import ConfigError


def test_redaction_removes_personal_keys_and_anything_that_looks_like_an_email_or_phone() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    structlog.get_logger("t").info("oops", email="marie@example.fr", note="call +33 6 12 34 56 78 or marie@example.fr",
                                   nested={"phone": "+33612345678", "ok": "request 5f0c"}, request_id="r-1")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["email"] == logs.REDACTED
    assert "marie" not in stream.getvalue() and "612345678" not in stream.getvalue()
    assert line["nested"] == {"phone": logs.REDACTED, "ok": "request 5f0c"}
    assert line["request_id"] == "r-1"


@pytest.mark.parametrize("text", [
    "call +33 6 12 34 56 78 now", "(+33)612345678", "tel:+33612345678", "phone=0612345678.", "ring 0612345678. Then",
    "06-12-34-56-78", "+1 (555) 123-4567", "Key (phone)=(+33612345678) already exists", "id-+33612345678",
])
def test_a_phone_number_in_prose_is_redacted_even_at_the_end_of_a_sentence(text: str) -> None:
    scrubbed = logs.scrub(text)
    assert logs.REDACTED in scrubbed and "1234" not in scrubbed and "612345678" not in scrubbed


def test_request_ids_keep_their_shape_in_the_logs() -> None:
    """Support greps the logs for a request id: its digit groups must not read as a phone number."""
    rng = random.Random(7)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20_000)]
    ids += ["776237dc-6633-4122-b898-46929d9751d4", "52050301-1027-4972-9530-007446450903", "order-2026-12-03-000123",
            "5f0c9a8e-1", "r-1"]
    assert [i for i in ids if logs.scrub(i) != i] == []
    assert logs.scrub(f"request {ids[0]} for +33612345678") == f"request {ids[0]} for {logs.REDACTED}"


def test_config_refuses_auto_commit_and_unresolved_secrets() -> None:
    with pytest.raises(ConfigError, match="enable.auto.commit"):
        config.build({"subject_key": "k", "kafka": {"client": {"enable.auto.commit": "true"}}}, env={})
    with pytest.raises(ConfigError, match="NOSTO_TOKEN"):
        config.build({"subject_key": "k", "systems": {"nosto": {"connector": "nosto",
                                                                "settings": {"token": "${NOSTO_TOKEN}"}}}}, env={})


def test_config_expands_env_and_hides_secrets() -> None:
    settings = config.build({"subject_key": "${KEY}", "store_url": "${DB:-sqlite:///x.db}"},
                            env={"KEY": "very-secret", "OUBLI_KAFKA_BOOTSTRAP": "k:9092"})
    assert settings.subject_key.get_secret_value() == "very-secret"
    assert "very-secret" not in repr(settings)
    assert settings.store_url == "sqlite:///x.db" and settings.kafka.bootstrap_servers == "k:9092"


def test_signing_secret_rotation_is_configured_and_reaches_intake(tmp_path: Path) -> None:
    from worker.app import Worker

    with pytest.raises(ConfigError, match="previous_signing_secrets needs signing_secret"):
        config.build({"subject_key": "k", "previous_signing_secrets": ["old"]}, env={})
    with pytest.raises(ConfigError, match="a signing secret is empty"):
        config.build({"subject_key": "k", "signing_secret": "new", "previous_signing_secrets": ["${OLD:-}"]}, env={})
    settings = config.build({
        "subject_key": "k", "store_url": f"sqlite:///{tmp_path / 'store.db'}", "signing_secret": "${NEW}",
        "previous_signing_secrets": ["${OLD}"], "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "worker": {"http_port": 0},
    }, env={"NEW": "new-secret", "OLD": "old-secret"})
    assert settings.verification_secrets() == (b"new-secret", b"old-secret")
    assert "old-secret" not in repr(settings)
    worker = Worker(settings, migrate=True, serve_http=False)
    try:
        assert worker.intake.signing_secret == b"new-secret" and worker.intake.previous_secrets == (b"old-secret",)
    finally:
        worker.close()


def test_invalid_config_errors_do_not_quote_values() -> None:
    with pytest.raises(ConfigError) as caught:
        config.build({"subject_key": "k", "worker": {"max_in_flight": "s3cr3t"}}, env={})
    assert "s3cr3t" not in str(caught.value) and "worker.max_in_flight" in str(caught.value)


def test_a_broker_outage_s_reconnect_failures_are_one_line_a_minute_with_a_count() -> None:
    """librdkafka reports each failed reconnect of each client (22 lines a second in an outage): the log keeps
    the first of each kind, then one a minute saying how many it held back; other kinds pass meanwhile."""
    import logging

    stream = io.StringIO()
    logs.configure(level="INFO", stream=stream)
    clock = [1000.0]
    (repeat,) = [f for f in logging.getLogger(logs.LIBRDKAFKA).filters if isinstance(f, logs.RepeatFilter)]
    repeat.monotonic = lambda: clock[0]
    kafka = logging.getLogger(logs.LIBRDKAFKA)
    for second in range(120):  # two minutes of an outage, 5 failures a second
        for _ in range(5):
            kafka.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1",
                        f"[thrd:broker:9092/bootstrap]: Connect failed: Connection refused (after {second} ms)")
        clock[0] += 1
    kafka.warning("%s [%s] %s", "MAXPOLL", "rdkafka#consumer-1", "[thrd:main]: Application maximum poll interval")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = [line["event"] for line in lines]
    assert len(events) == 3, events
    assert "more like it" not in events[0] and "(299 more like it in the last 60 s)" in events[1]
    assert events[2].startswith("MAXPOLL")


def test_library_logs_are_json_redacted_and_kept_quiet_even_at_debug() -> None:
    import logging

    stream = io.StringIO()
    logs.configure(level="DEBUG", stream=stream)
    assert logging.getLogger("botocore.endpoint").getEffectiveLevel() == logging.WARNING
    logging.getLogger("botocore.endpoint").debug("PUT /recordings/C-100234/call.wav")
    logging.getLogger("kafka.client").warning("delivery to marie@example.fr failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["kafka.client"]
    assert "marie" not in stream.getvalue() and lines[0]["level"] == "warning"
