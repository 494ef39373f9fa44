"""Safety nets: log redaction, and a config that refuses what would break the invariants."""

from __future__ import annotations

import io
import json
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
