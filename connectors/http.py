"""HTTP for vendor connectors: a deadline and a size cap on every call, https only, and errors that
carry no personal data.

No URL (vendor URLs hold emails and ids) goes into an exception, a ``Result`` or a log line; a filter
on the ``httpx`` logger keeps only scheme and host. ``classify``: transport errors, 408 and 5xx are
retryable, 429 too with ``retry_after``; 401/403 and other 4xx are permanent. Connectors look at
vendor error codes first, and take them only through ``safe_code``.

``VendorHttp.send`` bounds the whole exchange (connect, send, headers, body) by ``timeout_seconds``
and the decoded body by ``max_response_bytes`` (4 MiB): a vendor that trickles bytes or answers a
decompression bomb costs one call's time and at most the cap in memory, then a retryable error."""

from __future__ import annotations

import contextvars
import email.utils
import functools
import json
import logging
import re
import ssl
import time
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import certifi
import httpcore
import httpx

from worker.core.errors import ConnectorError, PermanentError, RetryableError

if TYPE_CHECKING:  # connectors.vendor builds on this module
    from connectors.vendor import Options

T = TypeVar("T")
# Letters and underscores only: a digit could be an id or a phone number, ``@`` and ``.`` an address.
_CODE = re.compile(r"^[A-Za-z][A-Za-z_]{0,63}$")
_SENT_TOKEN = re.compile(r"[^\s\"'/?&=,;:{}\[\]()]+")
_NOT_LETTERS = re.compile(r"[^a-z]+")
_WORD = re.compile(r"[a-z]{4,}")  # shorter pieces of what we sent are in too many honest codes
_HASH = re.compile(r"^[0-9a-f]{32,}$")  # its letter runs are noise, not a piece of an identifier
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # these JSON APIs answer in kilobytes


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
    timeout: float = 10.0  # the whole exchange, not each read
    connect_timeout: float = 5.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # decoded

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
        cap = int(opts.number("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, minimum=1024))
        return cls(base_url, timeout, min(timeout, connect), cap)


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


def safe_code(value: object, response: httpx.Response, *, documented: Collection[int] = ()) -> str | None:
    """A vendor error code fit for a message, or ``None``. Every vendor code goes through here.

    Error bodies are the vendor's to fill, and vendors echo what they were sent (a Shopimind 400
    answered ``{"error": "<the customer id of the URL>"}``). So a code must have a shape no
    identifier has (letters and underscores), must not be part of anything the request carried in
    its path, query or body values (compared on letters alone: ``marie_dupont`` is part of
    ``marie.dupont@…``), and must not contain a word of four letters or more of one (``dupont``).
    A number passes only if the connector lists it in ``documented`` (Graph API codes) and the
    request did not carry it.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    sent = _sent_tokens(response)
    if isinstance(value, int):
        return str(value) if value in documented and str(value) not in sent else None
    if not _CODE.match(value):
        return None
    letters = _NOT_LETTERS.sub("", value.lower())
    for token in sent:
        lowered = token.lower()
        if letters in _NOT_LETTERS.sub("", lowered):
            return None
        words = () if _HASH.match(lowered) else _WORD.findall(lowered)
        if any(word in letters for word in words):
            return None
    return value


def _sent_tokens(response: httpx.Response) -> set[str]:
    """The values the request carried: path segments, query and form values, JSON strings and numbers."""
    try:
        request = response.request
    except RuntimeError:  # a response built by hand, as in tests
        return set()
    texts = [unquote(request.url.path)] + [value for _, value in request.url.params.multi_items()]
    try:
        body = request.content.decode("utf-8", "replace")
    except httpx.RequestNotRead:
        body = ""
    if body:
        try:
            texts.extend(_json_values(json.loads(body)))
        except ValueError:
            texts.extend(value for _, value in parse_qsl(body, keep_blank_values=True))
    return {token for text in texts for token in _SENT_TOKEN.findall(text)}


def _json_values(node: object) -> Iterator[str]:
    """Values only: the keys (``productDestinationId``) are the vendor's words, and its codes use them."""
    if isinstance(node, dict):
        for item in node.values():
            yield from _json_values(item)
    elif isinstance(node, list):
        for item in node:
            yield from _json_values(item)
    elif isinstance(node, str | int | float) and not isinstance(node, bool):
        yield str(node)


def json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


TEMPORARY_REDIRECTS = frozenset({302, 303, 307})
PERMANENT_REDIRECTS = frozenset({301, 308})


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
    # Redirects are never followed (one could carry our credentials to another host). A temporary one is most often
    # a maintenance page, so it is waited out like a 503; a permanent one means the configured URL is out of date.
    if status in TEMPORARY_REDIRECTS:
        return RetryableError(f"{label}: the vendor redirected the call for a while (not followed)",
                              retry_after=parse_retry_after(response.headers, now), code="vendor_redirected")
    if status in PERMANENT_REDIRECTS:
        return PermanentError(f"{label}: the vendor moved this endpoint (not followed): check the connector's URL",
                              code="vendor_moved")
    return PermanentError(f"{label}: the vendor rejected the request", code="vendor_rejected")


# The end of the vendor call this thread is making (``time.monotonic``), read by every socket operation.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vendor_call_deadline", default=None)


def _within_deadline(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """Each read and write waits at most until the call's deadline: httpx's own timeouts bound one
    read, so a vendor sending a byte a second (headers or body) would otherwise hold the call forever."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _within_deadline(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, _within_deadline(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(
            path, _within_deadline(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _transport() -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(verify=_tls_context())
    # httpx takes no network backend, so its pool is rebuilt with the same settings and ours
    # (httpx.Limits' defaults; http/1.1 only, as httpx's default).
    limits = httpx.Limits()
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001 - see above
        ssl_context=_tls_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineBackend())
    return transport


class _TooLarge(Exception):
    pass


class _Decoder:
    """Decodes at most ``cap`` bytes of a body, whatever its compression ratio.

    httpx's decoders inflate each received chunk whole: 64 KiB of a gzip bomb become 64 MiB at once.
    Here ``max_length`` stops zlib at the cap.
    """

    def __init__(self, encoding: str, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self._raw = encoding in ("", "identity")
        self._deflate = encoding == "deflate"
        self._zlib = None if self._raw else zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
        self._first = True

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            return self._count(data)
        if self._first and self._deflate:
            self._first = False
            if len(data) >= 2 and (data[0] & 0x0F != 8 or (data[0] << 8 | data[1]) % 31):
                # No zlib header: a raw deflate stream, as some servers send for "deflate".
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        out = self._count(self._zlib.decompress(data, self.cap + 1 - self.size))
        parts = [out]
        while self._zlib.unconsumed_tail:
            parts.append(self._count(self._zlib.decompress(self._zlib.unconsumed_tail, self.cap + 1 - self.size)))
        return b"".join(parts)

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.cap:
            raise _TooLarge
        return data


_DECODABLE = {"", "identity", "gzip", "deflate"}


class VendorHttp:
    """One pooled ``httpx.Client`` per connector; every call has a deadline and a size cap."""

    def __init__(self, system: str, settings: HttpSettings, *, headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | None = None) -> None:
        self.system = system
        self.settings = settings
        self._client = httpx.Client(
            base_url=settings.base_url,
            # Per operation; the deadline of the whole call (``send``) is the same number.
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"user-agent": "oubli/0.1", "accept": "application/json",
                     "accept-encoding": "gzip, deflate", **(headers or {})},
            auth=auth,
            follow_redirects=False,  # a redirect could carry credentials to another host
            transport=_transport(),
        )

    def send(self, method: str, path: str, *, op: str, **kwargs: Any) -> httpx.Response:
        """Returns the response, read whole, whatever its status.

        Raises ``RetryableError`` on transport failure, when the call outlives ``timeout_seconds``,
        or when the decoded body exceeds ``max_response_bytes``. Too large is retryable: the cap
        bounds what a retry costs, and what sends such a reply (an error page from a proxy, a
        vendor's incident) tends to pass; one that does not runs out of attempts and reaches a
        person as ``action_required``. ``path`` may hold personal data: it is never put in an
        error. ``op`` names the operation.
        """
        token = _DEADLINE.set(time.monotonic() + self.settings.timeout)
        try:
            with self._client.stream(method, path, **kwargs) as response:
                body = self._read(response, op)
        except httpx.TimeoutException:
            raise RetryableError(f"{self.system}: {op} timed out after {self.settings.timeout:g}s",
                                 code="timeout") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"{self.system}: {op} could not reach the vendor ({type(exc).__name__})",
                                 code="connection") from None
        finally:
            _DEADLINE.reset(token)
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=body, request=response.request,
                              extensions=response.extensions)

    def _read(self, response: httpx.Response, op: str) -> bytes:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in _DECODABLE:  # we offer gzip and deflate only
            raise RetryableError(f"{self.system}: {op} got a reply in an encoding we did not offer",
                                 code="vendor_protocol")
        decoder = _Decoder(encoding, self.settings.max_response_bytes)
        chunks = []
        try:
            for raw in response.iter_raw():
                chunks.append(decoder.feed(raw))
                # The socket operations keep to the deadline; this covers what happens between them.
                _within_deadline(None, httpx.ReadTimeout)
        except _TooLarge:
            raise RetryableError(f"{self.system}: {op} got HTTP {response.status_code} with a reply over "
                                 f"{self.settings.max_response_bytes} bytes (max_response_bytes)",
                                 code="vendor_reply_too_large") from None
        except zlib.error:
            raise RetryableError(f"{self.system}: {op} got HTTP {response.status_code} with a reply that "
                                 "does not decode", code="vendor_protocol") from None
        return b"".join(chunks)

    def close(self) -> None:
        self._client.close()
