"""Hostile and mistyped settings fail at start, as a ConfigError naming the key (exit 5), never later.

Each of these was accepted once and then broke the running worker: ``http_port: 99999``, ``lease_seconds: .inf``
and ``vendor_wait_days: .inf`` raised OverflowError tracebacks at start-up; a 200-character ``worker_id`` made
every relay step fail on PostgreSQL's 128-character columns while the worker looked alive; ``session_timeout_ms:
-5`` and an empty topic name were reported as a broker outage (exit 4); an empty ``subject_key`` was used as an
HMAC key; a ``due_days_default`` past the year 9998 turned every command into ``out_of_range``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from worker import config
from worker.cli import cli
from worker.core.errors import ConfigError

BASE: dict[str, Any] = {"subject_key": "test-subject-key", "systems": {"alpha": {"connector": "devkit.fakes"}}}
INF, NAN = float("inf"), float("nan")

HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "port past 65535": ({"worker": {"http_port": 99999}}, "worker.http_port"),
    "negative port": ({"worker": {"http_port": -1}}, "worker.http_port"),
    "infinite lease": ({"worker": {"lease_seconds": INF}}, "worker.lease_seconds"),
    "infinite vendor wait": ({"worker": {"vendor_wait_days": INF}}, "worker.vendor_wait_days"),
    "vendor wait past timedelta": ({"worker": {"vendor_wait_days": 1e300}}, "worker.vendor_wait_days"),
    "infinite poll": ({"worker": {"poll_seconds": INF}}, "worker.poll_seconds"),
    "nan drain": ({"worker": {"drain_seconds": NAN}}, "worker.drain_seconds"),
    "huge outage exit": ({"worker": {"store_outage_exit_seconds": 1e300}}, "worker.store_outage_exit_seconds"),
    "huge in flight": ({"worker": {"max_in_flight": 10 ** 8}}, "worker.max_in_flight"),
    "worker id past its column": ({"worker": {"worker_id": "w" * 129}}, "worker.worker_id"),
    "empty worker id": ({"worker": {"worker_id": ""}}, "worker.worker_id"),
    "worker id with a newline": ({"worker": {"worker_id": "a\nb"}}, "worker.worker_id"),
    "infinite retry": ({"retry": {"max_seconds": INF}}, "retry.max_seconds"),
    "nan retry base": ({"retry": {"base_seconds": NAN}}, "retry.base_seconds"),
    "negative commit interval": ({"kafka": {"commit_interval_seconds": -1}}, "kafka.commit_interval_seconds"),
    "negative session timeout": ({"kafka": {"session_timeout_ms": -5}}, "kafka.session_timeout_ms"),
    "empty group": ({"kafka": {"group_id": ""}}, "kafka.group_id"),
    "empty topic": ({"kafka": {"topics": {"commands": ""}}}, "kafka.topics.commands"),
    "topic with a space": ({"kafka": {"topics": {"dlq": "my dlq"}}}, "kafka.topics.dlq"),
    "dot topic": ({"kafka": {"topics": {"receipts": ".."}}}, "kafka.topics"),
    "one topic for two": ({"kafka": {"topics": {"commands": "a", "receipts": "a"}}}, "kafka.topics"),
    "empty subject key": ({"subject_key": ""}, "subject_key"),
    "due days past 9998": ({"due_days_default": 10 ** 7}, "due_days_default"),
    "negative due days": ({"due_days_default": -5}, "due_days_default"),
    "huge keeps_data_days": ({"systems": {"alpha": {"connector": "devkit.fakes", "keeps_data_days": 10 ** 12}}},
                             "systems.alpha.keeps_data_days"),
    "infinite web rate": ({"web": {"rate_per_minute": INF}}, "web.rate_per_minute"),
}


def _with(override: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(("override", "key"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_setting_is_a_config_error_naming_its_key(override: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.build(_with(override), env={})
    assert f"{key}:" in caught.value.message


def test_the_defaults_and_the_bounds_themselves_are_accepted() -> None:
    config.build(BASE, env={})
    config.build(_with({"worker": {"http_port": 0, "worker_id": "w" * 128, "lease_seconds": 3600},
                        "due_days_default": 3650, "kafka": {"topics": {"commands": "c", "receipts": "r", "dlq": "d"}}}),
                 env={})


def test_the_worker_id_override_is_checked_like_the_file() -> None:
    with pytest.raises(ConfigError, match="worker.worker_id"):
        config.build(BASE, env={"OUBLI_WORKER_ID": "pod-" + "x" * 200})


def test_the_cli_exits_5_with_one_line_on_a_hostile_setting(tmp_path: Path) -> None:
    path = tmp_path / "oubli.yaml"
    path.write_text(yaml.safe_dump(_with({"store_url": f"sqlite:///{tmp_path / 'store.db'}",
                                          "worker": {"http_port": 99999}})))
    result = CliRunner().invoke(cli, ["--config", str(path), "status", "r-1"], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert "worker.http_port" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("client", "named"), [
    ({"no.such.prop": "1"}, "no.such.prop"),
    ({"linger.ms": "secret-looking-value"}, "queue.buffering.max.ms"),  # librdkafka names the alias it maps to
])
def test_a_kafka_client_setting_librdkafka_refuses_is_a_config_error_not_an_outage(
        tmp_path: Path, client: dict[str, str], named: str) -> None:
    """It was "the broker is unavailable or refused: _INVALID_ARG", exit 4: a page for an outage that is a typo."""
    path = tmp_path / "oubli.yaml"
    path.write_text(yaml.safe_dump(_with({"kafka": {"bootstrap_servers": "127.0.0.1:1", "client": client}})))
    result = CliRunner().invoke(cli, ["--config", str(path), "topics"], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert f"kafka.client: the Kafka client refused the setting {named}" in result.output
    assert "secret-looking-value" not in result.output


def test_an_empty_signing_secret_is_refused_not_read_as_signing_off() -> None:
    """SecretStr("") is falsy: the emptiness check skipped it, and the worker then took unsigned commands."""
    with pytest.raises(ConfigError, match="a signing secret is empty"):
        config.build(BASE, env={"OUBLI_SIGNING_SECRET": ""})
    with pytest.raises(ConfigError, match="a signing secret is empty"):
        config.build(_with({"signing_secret": ""}), env={})


@pytest.mark.parametrize("url", ["postgresql+psycopg://oubli:hunter2@[::1/oubli",
                                 "postgresql+psycopg://oubli:hunter2@db:hunter2/oubli", "junk", ""])
def test_a_malformed_store_url_is_a_config_error_that_quotes_nothing(tmp_path: Path, url: str) -> None:
    """It was a ValueError traceback (exit 1) whose message quoted part of the URL."""
    with pytest.raises(ConfigError, match="store_url: .*not a database URL") as caught:
        config.build(BASE, env={"OUBLI_STORE_URL": url})
    assert "hunter2" not in caught.value.message
    path = tmp_path / "oubli.yaml"
    path.write_text(yaml.safe_dump(_with({"store_url": url})))
    result = CliRunner().invoke(cli, ["--config", str(path), "status", "r-1"], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert "hunter2" not in result.output
