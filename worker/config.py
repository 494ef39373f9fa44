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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.core.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_SYSTEM_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Committing before the command is stored would lose it on a crash.
_FORBIDDEN_KAFKA_KEYS = {"enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"}


# Kafka's own rule for a topic name (and "." or ".." alone are refused too).
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
# Like a command's ids: it is stored in 128-character columns (leases, the audit trail's actor), so a longer one
# would make every claim and every receipt fail at run time instead of the worker refusing to start.
_WORKER_ID = r"^[^\s\x00-\x1f\x7f]{1,128}$"


class _Frozen(BaseModel):
    # No inf or nan anywhere: every number here ends in a timedelta, a sleep, a bind or a librdkafka setting,
    # where inf raises OverflowError at run time (a traceback, not a config error) and nan compares false to
    # every bound. Each number also has an upper bound, for the same reason.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Topics(_Frozen):
    commands: str = Field(default="privacy.commands", pattern=_TOPIC)
    receipts: str = Field(default="privacy.receipts", pattern=_TOPIC)
    dlq: str = Field(default="privacy.commands.dlq", pattern=_TOPIC)

    @model_validator(mode="after")
    def _distinct(self) -> Topics:
        names = (self.commands, self.receipts, self.dlq)
        if any(name in (".", "..") for name in names):
            raise ValueError("a topic may not be named . or ..")
        # A receipt or a dead letter written to the commands topic would be consumed as a command.
        if len(set(names)) != len(names):
            raise ValueError("commands, receipts and dlq must be three different topics")
        return self


class KafkaSettings(_Frozen):
    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    group_id: str = Field(default="oubli-worker", min_length=1, max_length=255)
    topics: Topics = Topics()
    session_timeout_ms: int = Field(default=45000, ge=1, le=3_600_000)  # librdkafka's range
    commit_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
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
    # How long the system itself keeps a subject's data (e.g. GA event data retention): a background
    # erasure of a subject inactive for longer is confirmed not_found without a call (worker/retention/vendorkeep.py).
    keeps_data_days: int | None = Field(default=None, ge=1, le=36_500)

    def __repr__(self) -> str:  # settings may hold credentials
        return f"SystemSettings(connector={self.connector!r}, concurrency={self.concurrency})"


class RetrySettings(_Frozen):
    base_seconds: float = Field(default=2.0, gt=0, le=86_400)
    max_seconds: float = Field(default=3600.0, gt=0, le=30 * 86_400)


class S3Settings(_Frozen):
    endpoint_url: str | None = None
    region: str = "eu-west-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None


class WorkerSettings(_Frozen):
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", pattern=_WORKER_ID)
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    # A task's lease: renewed every third of it while the call runs, so it bounds only how long a
    # dead worker's tasks wait for another worker (its own restart reclaims them at once). It must
    # outlast the longest stall of the main loop, which renews: two thirds of it, 20 s by default.
    lease_seconds: float = Field(default=30.0, ge=3, le=3600)
    # An async vendor job still unfinished this long after it was submitted fails its task
    # (vendor_wait_expired), so that a person looks at it.
    vendor_wait_days: float = Field(default=14.0, gt=0, le=3650)
    # A lost lease costs no attempt; this many lost in a row fail the task (worker_lost_repeatedly),
    # so that a call which kills its worker every time cannot crash-loop the fleet.
    max_lease_losses: int = Field(default=20, ge=1, le=10_000)
    # A connector call (or export packaging) still running this long is abandoned: a retryable call_timeout,
    # and its slot goes to other work. Client timeouts bound each read, not a whole call, so a reply
    # trickled byte by byte would otherwise hold its slot forever. Keep it above the longest honest call.
    call_timeout_seconds: float = Field(default=300.0, ge=1, le=86_400)
    # A task of a system no longer in ``systems`` (the vendor was dropped) is never claimed again: once it
    # has waited due this long, unclaimed, it fails (not_configured) so that a person looks at it. Keep it
    # above the longest rolling deploy: an old worker must not fail the tasks of a system the new ones add.
    unconfigured_grace_seconds: float = Field(default=900.0, ge=60, le=30 * 86_400)
    poll_seconds: float = Field(default=0.2, gt=0, le=60)
    # Commands consumed and recorded per loop turn (one store transaction for a run of valid commands).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    drain_seconds: float = Field(default=20.0, ge=0, le=3600)
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and metrics must be reachable from the kubelet
    http_port: int = Field(default=8080, ge=0, le=65535)
    # A store outage holds intake, tried again after 1 s, 2 s, 4 s ... up to store_retry_max_seconds. Past
    # store_outage_exit_seconds the worker exits non-zero: Kubernetes restarts it and its partitions move.
    # Short, because it is also how late intake resumes once the store is back: at 30 s, a 40 s database restart held
    # intake for up to 30 s more. A try is one connection attempt, cheap for the database even from a fleet.
    store_retry_max_seconds: float = Field(default=5.0, gt=0, le=3600)
    store_outage_exit_seconds: float = Field(default=300.0, gt=0, le=7 * 86_400)


class VerificationSettings(_Frozen):
    """Verification after erasure and tombstones (worker/verification, docs/operations.md)."""

    # Every erasure gets a `_verify` step once its systems confirmed: each internal system checks that the
    # subject is gone before `completed` is published. On unless turned off: SPEC §3.13 makes it an invariant.
    enabled: bool = True
    # The dedicated HMAC key of the tombstones (>= 16 characters; keep it stable, or every tombstone is
    # useless). None: no tombstones are laid and `oubli verify` has nothing to look for.
    tombstone_key: SecretStr | None = None
    tombstone_days: int = Field(default=1095, ge=1, le=3660)  # how long a tombstone is held (docs/compliance.md)
    requested_by: str = Field(default="resurrection-scan", min_length=1, max_length=128)
    scan_batch: int = Field(default=5000, ge=1, le=100_000)  # identifiers looked up per round trip

    @field_validator("tombstone_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("verification.tombstone_key must be at least 16 characters")
        return value


# -- retention rules, carried out by ``oubli sweep`` (worker/retention) --------------------------------
SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
CommandId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f]+$")]


class RetentionPeriod(_Frozen):
    """Calendar years, months and days. ``years_setting`` takes the years from the source system's settings
    (e.g. orders_db's ``billing_retention_years``), falling back to ``years`` when the system does not set it."""

    years: int = Field(default=0, ge=0, le=100)
    months: int = Field(default=0, ge=0, le=1200)
    days: int = Field(default=0, ge=0, le=36500)
    years_setting: SqlName | None = None

    def resolve(self, source_settings: dict[str, Any]) -> tuple[int, int, int]:
        years = source_settings.get(self.years_setting, self.years) if self.years_setting else self.years
        if isinstance(years, bool) or not isinstance(years, int) or years < 0:
            raise ValueError(f"setting {self.years_setting} must be a non-negative integer")
        if not years and not self.months and not self.days:
            raise ValueError("the period must be longer than zero")
        return years, self.months, self.days


class RetentionKey(_Frozen):
    """The column naming the subject: a customer id, or an email (normalised; the command then gets a
    pseudonymous customer id)."""

    customer_id: SqlName | None = None
    email: SqlName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RetentionKey:
        if (self.customer_id is None) == (self.email is None):
            raise ValueError("give exactly one of customer_id or email")
        return self


class RetentionCheck(_Frozen):
    """Keeps a subject that has a row in ``table`` (in ``system``, default the rule's source), or, with ``newer``,
    a row whose ``newer`` column is within the rule's period: recent activity elsewhere."""

    system: str | None = None
    table: SqlName
    key: SqlName
    newer: SqlName | None = None


class RetentionRule(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    source: str  # the system whose settings.url is scanned
    table: SqlName
    key: RetentionKey
    timestamp: tuple[SqlName, ...] = Field(min_length=1)  # a row's date is the latest non-null of these
    period: RetentionPeriod
    expires_when: Literal["all_rows", "any_row"] = "all_rows"
    emails: tuple[SqlName, ...] = ()  # columns copied into the command, so that every system can act
    phones: tuple[SqlName, ...] = ()
    unless: tuple[RetentionCheck, ...] = ()
    systems: tuple[str, ...] | None = Field(default=None, min_length=1)  # None: every configured system
    requested_by: CommandId = "retention-sweeper"
    reason: str | None = Field(default=None, max_length=1000)
    grace_days: int | None = Field(default=None, ge=0, le=3650)  # None: retention.grace_days

    @field_validator("timestamp", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class RetentionSettings(_Frozen):
    rules: tuple[RetentionRule, ...] = ()
    # A sweep's erasure is due this many days after the data expired (its rule's date), not one month
    # after the sweep: the deadline the scheduler plans by (worker/retention/commands.py).
    grace_days: int = Field(default=30, ge=0, le=3650)


class WebContact(_Frozen):
    """How the status page tells a person to reach the data protection service (no personal data of theirs)."""

    name: str = "VET SECURITE – Service protection des données"
    postal: str = "34 rue de Sistrière, 15000 Aurillac, France"
    email: str | None = None
    url: str | None = None


class WebCategory(_Frozen):
    """What a system holds, as the status page names it in each language; ``vendor``: a subprocessor."""

    en: str
    fr: str
    vendor: bool = False


class WebSettings(_Frozen):
    """``oubli web`` (worker/web, docs/web.md): Meta's data deletion callback, status pages, support lookup."""

    host: str = "0.0.0.0"  # noqa: S104 - reached through its Service / Ingress
    port: int = Field(default=8000, ge=0, le=65535)
    public_base_url: str = "http://127.0.0.1:8000"  # the status links Meta shows the person start with it
    facebook_app_secret: SecretStr | None = None  # None: the callback answers 404
    signed_request_max_age_seconds: int = Field(default=3600, ge=10, le=30 * 86_400)
    clock_skew_seconds: int = Field(default=300, ge=0, le=86_400)
    max_body_bytes: int = Field(default=8192, ge=512, le=1_048_576)
    support_tokens: tuple[SecretStr, ...] = ()  # bearer tokens for /support
    support_proxy_header: str | None = None  # e.g. X-Auth-Request-Email, set by a trusted OIDC proxy only
    trusted_proxies: str = "127.0.0.1"  # whose X-Forwarded-For gives the client IP (uvicorn's forwarded_allow_ips)
    rate_per_minute: float = Field(default=30.0, gt=0, le=1_000_000)  # per client IP, on the public endpoints
    rate_burst: int = Field(default=10, ge=1, le=1_000_000)
    erasure_systems: tuple[str, ...] | None = Field(default=None, min_length=1)  # None: every configured system
    requested_by: str = "facebook-data-deletion"
    retailer: str = "VET SECURITE"  # as the pages name the controller
    contact: WebContact = WebContact()
    categories: dict[str, WebCategory] = Field(default_factory=dict)  # overrides worker/web/categories.py

    @field_validator("support_tokens")
    @classmethod
    def _no_empty_token(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < 16 for token in value):
            raise ValueError("a support token must be at least 16 characters")
        return value


class Settings(_Frozen):
    store_url: str = "sqlite:///oubli.db"
    subject_key: SecretStr = Field(description="HMAC key for subject_ref and body digests")
    signing_secret: SecretStr | None = None
    # Still accepted on incoming commands, never used to sign: lets producers and workers rotate the
    # signing secret one after the other instead of at the same instant.
    previous_signing_secrets: tuple[SecretStr, ...] = ()
    kafka: KafkaSettings = KafkaSettings()
    systems: dict[str, SystemSettings] = Field(default_factory=dict)
    identity_system: str | None = None
    identity_kinds: tuple[str, ...] = (
        "ga_client_id", "ga_user_id", "ga_app_instance_id", "facebook_user_id", "shopimind_customer_id",
    )
    retry: RetrySettings = RetrySettings()
    s3: S3Settings = S3Settings()
    export: dict[str, Any] = Field(default_factory=dict)
    verification: VerificationSettings = VerificationSettings()
    worker: WorkerSettings = WorkerSettings()
    # None: one calendar month (GDPR Art. 12(3)). Bounded so that a typo cannot make every command out_of_range.
    due_days_default: int | None = Field(default=None, ge=1, le=3650)
    failpoints: frozenset[str] = frozenset()  # tests only: crash the process at named points
    retention: RetentionSettings = RetentionSettings()
    web: WebSettings = WebSettings()
    # oubli's own events; third-party libraries stay at WARNING or above whatever this says (logs.py).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("store_url")
    @classmethod
    def _store_url_parses(cls, value: str) -> str:
        # Checked here so that a malformed URL is exit 5 for every command, not a ValueError traceback from the
        # first engine. Neither the URL nor SQLAlchemy's text is quoted: both can hold the password.
        try:
            make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"store_url is not a database URL ({type(exc).__name__})") from None
        return value

    @field_validator("subject_key")
    @classmethod
    def _subject_key_not_empty(cls, value: SecretStr) -> SecretStr:
        # "${OUBLI_SUBJECT_KEY:-}" left unset: an empty HMAC key is one anyone has, and every subject_ref made
        # with it could be reversed by hashing customer ids.
        if not value.get_secret_value():
            raise ValueError("subject_key is empty")
        return value

    @field_validator("systems")
    @classmethod
    def _system_ids(cls, value: dict[str, SystemSettings]) -> dict[str, SystemSettings]:
        for system_id in value:
            if not _SYSTEM_ID.match(system_id):
                raise ValueError(f"system id {system_id!r} must match {_SYSTEM_ID.pattern}")
        return value

    @model_validator(mode="after")
    def _previous_secrets_need_a_current_one(self) -> Settings:
        if self.previous_signing_secrets and self.signing_secret is None:
            raise ValueError("previous_signing_secrets needs signing_secret: without it no command is verified")
        # An empty key is a key anyone has: "${OLD:-}" left unset must not accept every command.
        # "is not None", not truthiness: SecretStr("") is falsy, and compose reads an empty secret as signing off.
        secrets = (*self.previous_signing_secrets, *([self.signing_secret] if self.signing_secret is not None else []))
        if any(not secret.get_secret_value() for secret in secrets):
            raise ValueError("a signing secret is empty")
        return self

    def verification_secrets(self) -> tuple[bytes, ...]:
        """The current signing secret first, then the previous ones; empty when signatures are off."""
        if self.signing_secret is None:
            return ()
        return tuple(s.get_secret_value().encode() for s in (self.signing_secret, *self.previous_signing_secrets))

    @model_validator(mode="after")
    def _tombstone_key_is_dedicated(self) -> Settings:
        key = self.verification.tombstone_key
        if key is not None and key.get_secret_value() == self.subject_key.get_secret_value():
            raise ValueError("verification.tombstone_key must differ from subject_key: give it its own secret")
        return self

    @model_validator(mode="after")
    def _retention_names_configured_systems(self) -> Settings:
        names = [rule.name for rule in self.retention.rules]
        if len(set(names)) != len(names):
            raise ValueError("retention rule names must be unique")
        for rule in self.retention.rules:
            for system in sorted({rule.source, *(c.system for c in rule.unless if c.system)}):
                if system not in self.systems or not isinstance(self.systems[system].settings.get("url"), str):
                    raise ValueError(f"retention rule {rule.name}: {system} is not a configured system with "
                                     "settings.url")
            unknown = sorted(set(rule.systems or ()) - set(self.systems))
            if unknown:
                raise ValueError(f"retention rule {rule.name}: unknown systems {', '.join(unknown)}")
            try:
                rule.period.resolve(self.systems[rule.source].settings)
            except ValueError as exc:
                raise ValueError(f"retention rule {rule.name}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _web_scope_names_configured_systems(self) -> Settings:
        unknown = sorted(set(self.web.erasure_systems or ()) - set(self.systems))
        if unknown:
            raise ValueError(f"web.erasure_systems: unknown systems {', '.join(unknown)}")
        return self


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
    "OUBLI_LOG_LEVEL": ("log_level",),
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
        raw = _read(Path(path))
    return build(raw, env)


def _read(path: Path) -> Mapping[str, Any]:
    """The file's mapping. Its errors name the place, never the text: a config line may hold a password."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not a {type(raw).__name__}")
    return raw
