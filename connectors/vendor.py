"""What the five vendor connectors share: settings parsing, secrets, identifier lookup, progress.

Settings arrive as the plain mapping of the system's ``settings:`` block, with ``${ENV}``
references already expanded (so numbers may arrive as strings). Parsing fails with a
``ConfigError`` that names the system and the key, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from connectors.ratelimit import REGISTRY, Gate
from worker.core.connector import ConnectorContext, Subject
from worker.core.errors import ConfigError, OubliError, PermanentError, RetryableError
from worker.core.limits import QuotaSpec, RateSpec

_MISSING: Any = object()


class Secret:
    """A credential. ``repr`` and ``str`` never show it; ``reveal()`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**redacted**')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Options:
    """Typed reads from a settings mapping."""

    def __init__(self, system: str, raw: Mapping[str, Any], prefix: str = "") -> None:
        self.system = system
        self._raw = raw
        self._prefix = prefix

    def _get(self, key: str, default: Any) -> Any:
        value = self._raw.get(key, default)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return value

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"system {self.system}: setting {self._prefix}{key} {problem}")

    def has(self, key: str) -> bool:
        return self._raw.get(key) is not None

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
            raise self.error(key, "must be a non-empty string")
        return str(value).strip()

    def secret(self, key: str) -> Secret:
        value = self._get(key, _MISSING)
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string (a resolved secret)")
        return Secret(value)

    def number(self, key: str, default: Any = _MISSING, *, minimum: float = 0.0) -> float:
        value = self._get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(key, "must be a number") from None
        if isinstance(value, bool) or not number >= minimum:
            raise self.error(key, f"must be a number >= {minimum:g}")
        return number

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise self.error(key, "must be true or false")

    def texts(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(key, default)
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, Sequence) or not value:
            raise self.error(key, "must be a non-empty list")
        return tuple(Options(self.system, {"item": item}, f"{self._prefix}{key}[]").text("item")
                     for item in value)

    def section(self, key: str, default: Any = _MISSING) -> Options:
        value = self._get(key, default)
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a mapping")
        return Options(self.system, value, f"{self._prefix}{key}.")


def build_gate(opts: Options, context: ConnectorContext, *, buckets: Mapping[str, RateSpec],
               quotas: Mapping[str, int] | None = None, quota_tz: str = "UTC") -> Gate:
    """Limits named by ``buckets``/``quotas`` keys; ``rate_limit``/``daily_quota`` override.

    ``rate_limit: {per_second, burst}`` replaces the rate of every bucket; ``daily_quota: N`` the
    limit of every quota. A vendor's documented limits are the defaults. The limits live in
    ``context.limits`` (shared by every worker on the store), else in this process's registry.
    """
    override = opts.section("rate_limit", {}) if opts.has("rate_limit") else None
    specs = dict(buckets)
    if override is not None:
        try:
            specs = {key: RateSpec(override.number("per_second", spec.per_second, minimum=1e-6),
                                   override.number("burst", spec.burst, minimum=1.0))
                     for key, spec in specs.items()}
        except ValueError as exc:
            raise opts.error("rate_limit", str(exc)) from None
    limits = dict(quotas or {})
    if opts.has("daily_quota"):
        limits = {key: int(opts.number("daily_quota", minimum=1)) for key in limits}
    tz = opts.text("quota_timezone", quota_tz)
    try:
        quota_list = tuple((key, QuotaSpec(limit, tz)) for key, limit in limits.items())
    except (ValueError, ZoneInfoNotFoundError):
        raise opts.error("quota_timezone", "must be an IANA time zone such as Europe/Paris") from None
    return Gate(system=opts.system, buckets=tuple(specs.items()), quotas=quota_list, now=context.now,
                limits=context.limits if context.limits is not None else REGISTRY)


def resolve_ids(system: str, subject: Subject, kind: str, context: ConnectorContext) -> tuple[str, ...]:
    """The command's identifiers of ``kind`` plus those the identity lookup knows, sorted, unique.

    Sorted so that a resumed job (see ``Progress``) walks the same list in the same order.
    """
    found = set(subject.ids(kind))
    if context.identity is not None:
        try:
            found.update(context.identity.identifiers(subject, kind))
        except OubliError:
            raise
        except Exception as exc:  # the lookup is another team's code: keep our error contract
            raise RetryableError(f"{system}: identity lookup for {kind} failed ({type(exc).__name__})",
                                 code="identity_lookup") from None
    return tuple(sorted({value.strip() for value in found if value and value.strip()}))


def valid_ids(system: str, subject: Subject, kind: str, context: ConnectorContext, pattern: re.Pattern[str],
              description: str) -> tuple[str, ...]:
    """``resolve_ids``, refusing (before any call) an identifier that ``pattern`` does not match.

    The identifier goes into a URL path, so a bad one could reach another resource.
    """
    ids = resolve_ids(system, subject, kind, context)
    if any(not pattern.match(value) for value in ids):
        raise PermanentError(f"{system}: an identifier is not {description}", code="invalid_identifier")
    return ids


_PROGRESS = re.compile(r"^progress:(\d+)/(\d+)(?::([a-z_]{1,16}))?$")


@dataclass(frozen=True)
class Progress:
    """How far a multi-call job got before our own rate limit cut it short.

    Its ``ref()`` becomes the ``vendor_ref`` of a ``Pending``, so that ``poll`` resumes where
    ``erase`` stopped instead of redoing (and re-spending tokens on) the calls already made. It
    holds counts and a short state word only, never identifiers.
    """

    done: int
    total: int
    note: str = ""

    def ref(self) -> str:
        return f"progress:{self.done}/{self.total}" + (f":{self.note}" if self.note else "")

    @classmethod
    def parse(cls, vendor_ref: str, total: int) -> Progress | None:
        """``None`` if ``vendor_ref`` is no progress marker; a fresh start if the list changed."""
        match = _PROGRESS.match(vendor_ref)
        if match is None:
            return None
        done, was, note = int(match.group(1)), int(match.group(2)), match.group(3) or ""
        if was != total or done > total:
            return cls(0, total)
        return cls(done, total, note)
