"""The error tree, named for what the caller does next.

Messages and fields never carry personal data: only system ids, request ids, status codes and
stable error codes. Connectors raise only ``RetryableError``, ``PermanentError`` and
``NeedsPersonError``; intake raises ``InvalidCommand``.
"""

from __future__ import annotations

import re

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_NOT_CODE = re.compile(r"[^a-z0-9_]+")


def stable_code(code: object) -> str:
    """``code`` as receipt.v1 and the store hold an error code (``^[a-z][a-z0-9_]{0,63}$``).

    A plug-in connector's code is its author's text: one that breaks the pattern would publish a receipt that
    breaks its schema, and one over 64 characters made the store refuse the whole batch of results, tried again on
    every turn. Mapped, not refused: ``Vendor-Error 42`` reads ``vendor_error_42``, what is left of it is kept."""
    text = code if isinstance(code, str) else ""
    if _CODE.fullmatch(text):
        return text
    mapped = _NOT_CODE.sub("_", text.lower()).strip("_")
    if not mapped[:1].isalpha():
        mapped = f"connector_{mapped}".strip("_")
    return mapped[:64].rstrip("_")


class OubliError(Exception):
    """Base of every error oubli raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConnectorError(OubliError):
    """A connector call did not confirm."""


class RetryableError(ConnectorError):
    """Try again later: timeouts, 5xx, 429, a database that is restarting.

    ``retry_after`` (seconds) is the earliest retry the remote side asked for, if it said.
    """

    code = "retryable"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Retrying cannot help (4xx other than 429, a bad configuration): the system fails at once."""

    code = "permanent"


class NeedsPersonError(ConnectorError):
    """Only an operator can settle this, for example an ambiguous match or a vendor case to file."""

    code = "needs_person"


class Throttled(RetryableError):
    """Our own rate limiter said not yet. Not a failure: it does not count as an attempt."""

    code = "throttled"


class QuotaDeferred(RetryableError):
    """A daily quota is spent: retry when the next window opens (``retry_after`` says when).

    Like ``Throttled`` it does not count as an attempt; the request's status shows the deferral.
    """

    code = "quota_deferred"


class StagingLost(RetryableError):
    """Files an export staged are gone before they were packaged (an expiry, a store that lost them): the
    ``systems`` that staged them must export again."""

    code = "export_staging_lost"

    def __init__(self, message: str, *, systems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.systems = systems


class InvalidCommand(OubliError):
    """A command that cannot be accepted. It goes to the DLQ with ``code`` as its stable error code."""

    code = "invalid_command"

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


class ConfigError(OubliError):
    """The configuration is unusable; the worker refuses to start."""

    code = "config_error"


class StoreUnavailable(OubliError):
    """The store cannot be reached (lost connection, pool timeout): nothing was recorded.

    Not the input's fault, so the input is not dead-lettered: the caller rewinds and pauses intake
    for a bounded time instead. A store error caused by the data is ``store_rejected`` poison.
    """

    code = "store_unavailable"
