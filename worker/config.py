"""Configuration, resolved once at start-up into frozen models that are passed down.

Sources, in order: a YAML file (``--config`` or ``OUBLI_CONFIG``) whose string values may name
environment variables as ``${NAME}``, then a few ``OUBLI_*`` overrides that deployments set per pod.
Nothing else in oubli reads the environment.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from worker.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_SYSTEM_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Committing before the command is stored would lose it on a crash (SPEC invariant 1).
_FORBIDDEN_KAFKA_KEYS = {"enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Topics(_Frozen):
    commands: str = "privacy.commands"
    receipts: str = "privacy.receipts"
    dlq: str = "privacy.commands.dlq"


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "oubli-worker"
    topics: Topics = Topics()
    session_timeout_ms: int = 45000
    commit_interval_seconds: float = 1.0
    # Extra librdkafka settings (SASL/TLS). Secrets belong in ${ENV} references.
    client: dict[str, str] = Field(default_factory=dict)

    @field_validator("client")
    @classmethod
    def _no_unsafe_overrides(cls, value: dict[str, str]) -> dict[str, str]:
        unsafe = sorted(_FORBIDDEN_KAFKA_KEYS & value.keys())
        if unsafe:
            raise ValueError(f"kafka.client may not set {', '.join(unsafe)}: oubli commits offsets itself")
        return value


class SystemSettings(_Frozen):
    connector: str
    concurrency: int = Field(default=4, ge=1, le=256)
    max_attempts: int = Field(default=8, ge=1, le=100)
    settings: dict[str, Any] = Field(default_factory=dict)

    def __repr__(self) -> str:  # settings may hold credentials
        return f"SystemSettings(connector={self.connector!r}, concurrency={self.concurrency})"


class RetrySettings(_Frozen):
    base_seconds: float = Field(default=2.0, gt=0)
    max_seconds: float = Field(default=3600.0, gt=0)


class S3Settings(_Frozen):
    endpoint_url: str | None = None
    region: str = "eu-west-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None


class WorkerSettings(_Frozen):
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_in_flight: int = Field(default=64, ge=1)
    lease_seconds: float = Field(default=300.0, gt=0)
    poll_seconds: float = Field(default=0.2, gt=0)
    drain_seconds: float = Field(default=20.0, ge=0)
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and metrics must be reachable from the kubelet
    http_port: int = 8080


class Settings(_Frozen):
    store_url: str = "sqlite:///oubli.db"
    subject_key: SecretStr = Field(description="HMAC key for subject_ref and body digests")
    signing_secret: SecretStr | None = None
    kafka: KafkaSettings = KafkaSettings()
    systems: dict[str, SystemSettings] = Field(default_factory=dict)
    identity_system: str | None = None
    identity_kinds: tuple[str, ...] = (
        "ga_client_id", "ga_user_id", "ga_app_instance_id", "facebook_user_id", "shopimind_customer_id",
    )
    retry: RetrySettings = RetrySettings()
    s3: S3Settings = S3Settings()
    export: dict[str, Any] = Field(default_factory=dict)
    worker: WorkerSettings = WorkerSettings()
    due_days_default: int | None = None  # None: one calendar month (GDPR Art. 12(3))
    failpoints: frozenset[str] = frozenset()  # tests only: crash the process at named points

    @field_validator("systems")
    @classmethod
    def _system_ids(cls, value: dict[str, SystemSettings]) -> dict[str, SystemSettings]:
        for system_id in value:
            if not _SYSTEM_ID.match(system_id):
                raise ValueError(f"system id {system_id!r} must match {_SYSTEM_ID.pattern}")
        return value


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Replaces ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is referenced by the config but not set")
        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value


_OVERRIDES = {
    "OUBLI_STORE_URL": ("store_url",),
    "OUBLI_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "OUBLI_SUBJECT_KEY": ("subject_key",),
    "OUBLI_SIGNING_SECRET": ("signing_secret",),
    "OUBLI_WORKER_ID": ("worker", "worker_id"),
}


def build(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    tree: dict[str, Any] = expand_env(dict(raw), env)
    for variable, path in _OVERRIDES.items():
        if variable in env:
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = env[variable]
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        # pydantic's message quotes the offending input; keep only locations and reasons.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    path = path or env.get("OUBLI_CONFIG")
    raw: Mapping[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return build(raw, env)
