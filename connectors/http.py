"""HTTP for vendor connectors: bounded timeouts, https only, and errors that carry no personal data.

Vendor URLs hold personal data (``/v1/customers/redact/{email}``, ``/{user-id}/permissions``), so
no URL ever goes into an exception, a ``Result`` or a log line. ``httpx`` logs every request URL
at INFO; this module installs a filter on the ``httpx`` logger that keeps only scheme and host.

Classification (``classify``):

* transport errors and timeouts, 408, 5xx: ``RetryableError``;
* 429: ``RetryableError`` with ``retry_after`` from ``Retry-After`` (seconds or an HTTP date), else
  from ``RateLimit-Reset`` / ``X-RateLimit-Reset``;
* 401/403: ``PermanentError`` saying the vendor refused our credentials;
* any other 4xx: ``PermanentError``.

Connectors look at vendor error codes first (say, Graph API code 4 is a rate limit) and fall back
to ``classify``.
"""

from __future__ import annotations

import abc
import email.utils
import functools
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

import certifi
import httpx

from connectors.base import CallResult, ConnectorContext, ExportWriter, Pending, Result, Subject
from connectors.ratelimit import Gate
from connectors.vendor import Options, Progress
from worker.errors import ConnectorError, PermanentError, QuotaDeferred, RetryableError, Throttled

T = TypeVar("T")
_CODE = re.compile(r"^[A-Za-z0-9_.:/#-]{1,64}$")


class _OriginOnly(logging.Filter):
    """Rewrites URL arguments of ``httpx`` log records to ``scheme://host`` (the path holds PII)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.scheme}://{arg.host}/[redacted]" if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _OriginOnly) for f in logger.filters):
        logger.addFilter(_OriginOnly())


_install_log_filter()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verified TLS context for every client: loading the CA bundle costs tens of ms each time."""
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class HttpSettings:
    base_url: str
    timeout: float = 10.0
    connect_timeout: float = 5.0

    @classmethod
    def parse(cls, opts: Options, default_base_url: str) -> HttpSettings:
        base_url = opts.text("base_url", default_base_url).rstrip("/")
        parts = urlsplit(base_url)
        if not parts.hostname or parts.scheme not in {"https", "http"}:
            raise opts.error("base_url", "must be an absolute https URL")
        if parts.scheme == "http" and not opts.flag("allow_insecure_http", False):
            raise opts.error("base_url", "must use https (allow_insecure_http is for tests and demos only)")
        timeout = opts.number("timeout_seconds", 10.0, minimum=0.001)
        connect = opts.number("connect_timeout_seconds", 5.0, minimum=0.001)
        return cls(base_url, timeout, min(timeout, connect))


MAX_RETRY_AFTER = 86_400.0  # a day: a broken header must not silence a vendor until restart


def parse_retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the vendor asked us to wait, from ``Retry-After`` or the common rate-limit headers."""
    seconds = _retry_after(headers, now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


def _retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            return max(0.0, (when - now).total_seconds())
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        raw = headers.get(name)
        try:
            number = float(raw) if raw else None
        except ValueError:
            number = None
        if number is not None:
            # Some vendors send an epoch timestamp, others a delta in seconds.
            return max(0.0, number - now.timestamp()) if number > 1_000_000_000 else max(0.0, number)
    return None


def safe_code(value: object) -> str | None:
    """A vendor error code fit for a message: a short token, or nothing (never free text)."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return text if _CODE.match(text) else None


def json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def classify(system: str, op: str, response: httpx.Response, now: datetime,
             vendor_code: str | None = None) -> ConnectorError:
    status = response.status_code
    label = f"{system}: {op} got HTTP {status}" + (f" ({vendor_code})" if vendor_code else "")
    if status == 429:
        return RetryableError(f"{label}: the vendor asks us to slow down",
                              retry_after=parse_retry_after(response.headers, now),
                              code="vendor_rate_limited")
    if status >= 500 or status == 408:
        return RetryableError(f"{label}: the vendor is unavailable",
                              retry_after=parse_retry_after(response.headers, now), code="vendor_unavailable")
    if status in (401, 403):
        return PermanentError(f"{label}: the vendor refused our credentials", code="credentials_refused")
    return PermanentError(f"{label}: the vendor rejected the request", code="vendor_rejected")


class VendorHttp:
    """One pooled ``httpx.Client`` per connector, with a timeout on every call."""

    def __init__(self, system: str, settings: HttpSettings, *, headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | None = None) -> None:
        self.system = system
        self.settings = settings
        self._client = httpx.Client(
            base_url=settings.base_url,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"user-agent": "oubli/0.1", "accept": "application/json", **(headers or {})},
            auth=auth,
            follow_redirects=False,  # a redirect could carry credentials to another host
            verify=_tls_context(),
        )

    def send(self, method: str, path: str, *, op: str, **kwargs: Any) -> httpx.Response:
        """Returns the response, whatever its status; raises ``RetryableError`` on transport failure.

        ``path`` may hold personal data: it is never put in an error. ``op`` names the operation.
        """
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise RetryableError(f"{self.system}: {op} timed out after {self.settings.timeout:g}s",
                                 code="timeout") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"{self.system}: {op} could not reach the vendor ({type(exc).__name__})",
                                 code="connection") from None

    def close(self) -> None:
        self._client.close()


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
            # Every caller of this vendor in the process waits, not just this one.
            wait = parse_retry_after(response.headers, self.context.now())
            self.gate.hold(wait if wait is not None else 1.0)
        return response

    @abc.abstractmethod
    def erase(self, subject: Subject) -> CallResult: ...

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return Result("not_supported", detail=f"{self.system}: the vendor API offers no export")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise PermanentError(f"{self.system}: no async job of this connector matches the reference",
                             code="unknown_vendor_ref")

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
            except (Throttled, QuotaDeferred) as exc:
                if index == progress.done:
                    raise
                return Pending(Progress(index, len(targets), note).ref(), poll_after=exc.retry_after or 1.0)
            note = self._combine(note, answers[-1])
        return self._finished(job, targets, note, answers)
