"""HTTP for vendor connectors: bounded timeouts, https only, and errors that carry no personal data.

No URL (vendor URLs hold emails and ids) goes into an exception, a ``Result`` or a log line; a filter
on the ``httpx`` logger keeps only scheme and host. ``classify``: transport errors, 408 and 5xx are
retryable, 429 too with ``retry_after``; 401/403 and other 4xx are permanent. Connectors look at
vendor error codes first."""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import certifi
import httpx

from worker.core.errors import ConnectorError, PermanentError, RetryableError

if TYPE_CHECKING:  # connectors.vendor builds on this module
    from connectors.vendor import Options

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
