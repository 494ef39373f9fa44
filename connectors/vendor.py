"""The base of the vendor connectors and what they share: ``VendorConnector`` (one rate-limit gate,
one HTTP client, the contract's defaults), ``PerTargetConnector`` (a per-target job that resumes
from a progress marker in ``vendor_ref``), settings parsing (``Options``), secrets, identifier lookup.

Settings arrive as the plain mapping of the system's ``settings:`` block, with ``${ENV}``
references already expanded (so numbers may arrive as strings). Parsing fails with a
``ConfigError`` that names the system and the key, never the value.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfoNotFoundError

import httpx

from connectors.http import VendorHttp, parse_retry_after
from connectors.ratelimit import REGISTRY, Gate
from worker.core.connector import CallResult, Connector, ConnectorContext, ExportWriter, Pending, Result, Subject
from worker.core.errors import ConfigError, OubliError, PermanentError, RetryableError
from worker.core.limits import Capacity, QuotaSpec, RateSpec

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
        self._read: set[str] = set()  # every key asked for, present or not
        self._sections: list[Options] = []

    def unused(self) -> list[str]:
        """Keys of the settings (and of the sections read) that nothing asked for, with their prefix."""
        mine = [f"{self._prefix}{key}" for key in self._raw if key not in self._read]
        return sorted(mine + [key for section in self._sections for key in section.unused()])

    def refuse_unused(self, connector: str) -> None:
        """Raises ``ConfigError`` naming the keys no read asked for: a typo (``rate_limt``) would otherwise be
        ignored in silence, and the vendor's defaults used in its place. Called once the connector is built."""
        unused = self.unused()
        if unused:
            raise ConfigError(f"system {self.system}: the {connector} connector has no setting "
                              f"{', '.join(str(key)[:64] for key in unused[:10])}")

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        value = self._raw.get(key, default)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return value

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"system {self.system}: setting {self._prefix}{key} {problem}")

    def has(self, key: str) -> bool:
        self._read.add(key)
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
        # ``not >=`` also refuses NaN; infinity would pass it and then mean no deadline (timeout_seconds), no cap
        # (max_response_bytes) or an OverflowError far from here (daily_quota, rate_limit).
        if isinstance(value, bool) or not number >= minimum or not math.isfinite(number):
            raise self.error(key, f"must be a finite number >= {minimum:g}")
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
        section = Options(self.system, value, f"{self._prefix}{key}.")
        self._sections.append(section)
        return section



def create_refusing_unused(make: Callable[[str, Options, ConnectorContext], Connector], connector: str,
                           system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    """A vendor connector's ``create``: builds it from its settings, then refuses any key it did not read."""
    opts = Options(system_id, settings)
    built = make(system_id, opts, context)
    opts.refuse_unused(connector)
    return built
DEFAULT_BACKGROUND_SHARE = 0.6


def build_gate(opts: Options, context: ConnectorContext, *, buckets: Mapping[str, RateSpec],
               quotas: Mapping[str, int] | None = None, quota_tz: str = "UTC") -> Gate:
    """Limits named by ``buckets``/``quotas`` keys; ``rate_limit``/``daily_quota`` override.

    ``rate_limit: {per_second, burst}`` replaces the rate of every bucket; ``daily_quota: N`` the
    limit of every quota; ``background_share`` (default 0.6) the share of each daily quota that
    background work may spend. A vendor's documented limits are the defaults. The limits live in
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
    # The share of each daily quota background work (the retention sweep, backfills) may spend.
    share = opts.number("background_share", DEFAULT_BACKGROUND_SHARE, minimum=0.01) if quota_list else 1.0
    if share > 1:
        raise opts.error("background_share", "must be at most 1 (a share of the daily quota)")
    return Gate(system=opts.system, buckets=tuple(specs.items()), quotas=quota_list, now=context.now,
                limits=context.limits if context.limits is not None else REGISTRY, background_share=share)


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


T = TypeVar("T")


class VendorConnector(abc.ABC):
    """Base of the vendor connectors: one gate, one HTTP client, and the defaults of the contract.

    ``call`` passes the gate first (raising ``Throttled``/``QuotaDeferred`` without any I/O), then
    sends.
    """

    system: str

    def __init__(self, system: str, context: ConnectorContext, http: VendorHttp, gate: Gate) -> None:
        self.system = system
        self.context = context
        self.http = http
        self.gate = gate

    def call(self, method: str, path: str, *, op: str, **kwargs: Any) -> httpx.Response:
        self.gate.admit()
        response = self.http.send(method, path, op=op, **kwargs)
        if response.status_code == 429:
            # Every caller of this vendor in the fleet waits, not just this one: the hold is in the store.
            wait = parse_retry_after(response.headers, self.context.now())
            self.gate.hold(wait if wait is not None else 1.0)
        elif response.status_code == 503 and "retry-after" in response.headers:
            # The vendor says how long it expects to be down (maintenance): the whole fleet waits that long too,
            # instead of each call meeting its own 503 first.
            wait = parse_retry_after(response.headers, self.context.now())
            if wait:
                self.gate.hold(wait)
        return response

    @abc.abstractmethod
    def erase(self, subject: Subject) -> CallResult: ...

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported", detail=f"{self.system}: the vendor API offers no export")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise PermanentError(f"{self.system}: no async job of this connector matches the reference",
                             code="unknown_vendor_ref")

    def capacity(self) -> Capacity:
        """The vendor's limits, for planning (``worker.foresight``)."""
        return self.gate.capacity()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:  # never the settings: they hold credentials
        return f"{type(self).__name__}(system={self.system!r})"


class PerTargetConnector(VendorConnector, Generic[T]):
    """A connector whose job is one vendor call per target (an id, an address), resumable through ``Progress``.

    A subclass supplies ``no_targets`` (the ``not_found`` detail when a subject has no target),
    ``_targets`` (in a stable order, so that a resumed run walks the same list), ``_step`` (the
    call for one target, returning a short answer) and ``_finished`` (the result once every target
    is done). When our own limiter cuts a run short after some progress, the run returns a
    ``Pending`` whose ``vendor_ref`` lets ``poll`` resume from there. ``job`` names what a run does:
    ``erase`` and ``poll`` run ``"erase"``; a vendor with more jobs starts and resumes them itself.
    """

    no_targets: ClassVar[str]

    @abc.abstractmethod
    def _targets(self, subject: Subject) -> Sequence[T]: ...

    @abc.abstractmethod
    def _step(self, job: str, target: T) -> str: ...

    @abc.abstractmethod
    def _finished(self, job: str, targets: Sequence[T], note: str, answers: Sequence[str]) -> Result:
        """``answers`` are those of the calls this run made, not of the runs it resumes."""

    def _combine(self, note: str, answer: str) -> str:
        """Folds an answer into the note that a resumed run starts from; by default nothing is kept."""
        return ""

    def erase(self, subject: Subject) -> CallResult:
        return self._start(subject, "erase")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        return self._resume(subject, "erase", vendor_ref)

    def _start(self, subject: Subject, job: str) -> CallResult:
        targets = self._targets(subject)
        if not targets:
            return Result("not_found", detail=self.no_targets)
        return self._run(job, targets, Progress(0, len(targets)))

    def _resume(self, subject: Subject, job: str, vendor_ref: str) -> CallResult:
        targets = self._targets(subject)
        progress = Progress.parse(vendor_ref, len(targets))
        if progress is None or not targets:
            return super().poll(subject, vendor_ref)
        return self._run(job, targets, progress)

    def _run(self, job: str, targets: Sequence[T], progress: Progress) -> CallResult:
        note = progress.note
        answers: list[str] = []
        for index in range(progress.done, len(targets)):
            try:
                answers.append(self._step(job, targets[index]))
            except RetryableError as exc:
                # Our limiter, or the vendor's (a 429, a 5xx) after some targets were accepted: stop here and resume
                # from this target, rather than fail and send the accepted ones again (spending the vendor's quota).
                # Met on the run's first target, it is the call's failure (a poll's counts as an attempt).
                if index == progress.done:
                    raise
                return Pending(Progress(index, len(targets), note).ref(), poll_after=exc.retry_after or 1.0)
            note = self._combine(note, answers[-1])
        return self._finished(job, targets, note, answers)
