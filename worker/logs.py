"""Structured JSON logs, with a redaction processor as the last line of defence for personal data.

Code never logs personal data on purpose; the processor catches what slips through: values of
keys that name personal fields, and anything in any string that looks like an email or a phone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import unicodedata
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import structlog

PERSONAL_KEYS = frozenset({
    "email", "emails", "phone", "phones", "customer_id", "subject", "identifiers", "name", "address",
    "first_name", "last_name", "birth_date", "ga_client_id", "facebook_user_id", "body", "value", "raw",
})
EMAIL = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+\.[A-Za-z]{2,}")
# Where a phone number ends: not inside a word or a longer number (a dot followed by more of it), but at the
# end of a sentence ("call 0612345678."). A run of digits glued by a hyphen to letters or digits is one token of
# an identifier, not a phone number, and so is a UUID: the digit groups of a request id
# ("776237dc-6633-4122-b898-…", about 7 % of random ones) and ids such as "order-2026-12-03-000123" stay
# whole, so that the logs still name the request support looks for.
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
PHONE = re.compile(rf"(?<![\w.])(?<![^\W_]-)(?!{_UUID})\+?\d[\d \-().]{{7,}}\d(?!\w|[.-][^\W_])")
REDACTED = "[redacted]"
# Any "x@y": "jean@corp" names a person too, though EMAIL wants a domain with a dot.
AT_ADDRESS = re.compile(r"\S@\S")


def scrub(text: str) -> str:
    return PHONE.sub(REDACTED, EMAIL.sub(REDACTED, text))


def looks_personal(text: str) -> bool:
    """Whether ``text`` holds anything shaped like an email address (any "x@y") or a phone number, as a reader
    reads it (``fold``: "marie\uff20example.fr" is an address too)."""
    folded = fold(text)
    return AT_ADDRESS.search(folded) is not None or scrub(folded) != folded


def fold(text: str) -> str:
    """``text`` as a reader reads it, for matching personal data: NFKC (a full-width or small "@" is "@", a
    full-width "Ｃ" is "C"), without zero-width and other format characters, trimmed and case-folded."""
    if text.isascii():  # NFKC leaves ASCII as it is, and no ASCII character is a format character: 8 times faster
        return text.strip().casefold()
    normal = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in normal if unicodedata.category(ch) != "Cf").strip().casefold()


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_KEYS else _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key in PERSONAL_KEYS:
            event_dict[key] = REDACTED
        elif key not in ("timestamp", "level", "logger"):
            event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


# Third-party clients log request URLs, S3 keys and bodies at DEBUG, and those hold personal data
# (``recordings/{customer_id}/…``, ``/customers/redact/{email}``). They stay at WARNING whatever
# level oubli itself logs at.
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "psycopg", "sqlalchemy")


LIBRDKAFKA = "oubli.librdkafka"
REPEAT_WINDOW_SECONDS = 60.0


class RepeatFilter(logging.Filter):
    """One line per kind per window from a chatty source; the next one says how many were held back.

    While a broker is down librdkafka reports every failed reconnect of every client: 22 lines a second,
    4,000 over two short outages, which buries the lines an operator is looking for. A kind is the line's
    source and the part before its details (``FAIL [rdkafka#consumer-1] [thrd:host:port/bootstrap]``).
    """

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS, monotonic: Any = None) -> None:
        super().__init__()
        self.window = window
        self.monotonic = monotonic or time.monotonic
        self.last: dict[tuple[int, str], float] = {}
        self.held: dict[tuple[int, str], int] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        kind = (record.levelno, message.split("]: ", 1)[0] if "]: " in message else message[:80])
        now = self.monotonic()
        with self.lock:
            if now - self.last.get(kind, -self.window) < self.window:
                self.held[kind] = self.held.get(kind, 0) + 1
                return False
            self.last[kind] = now
            held = self.held.pop(kind, 0)
        if held:
            record.msg, record.args = f"{message} ({held} more like it in the last {self.window:.0f} s)", None
        return True


def librdkafka_logger() -> logging.Logger:
    """Where the Kafka clients' own lines go (their ``logger`` setting): JSON and redacted, like ours.

    Without it librdkafka prints plain text to stderr, past the redaction. A client hands its lines
    over when it is polled.
    """
    return logging.getLogger(LIBRDKAFKA)


LEVEL_VARIABLE = "OUBLI_LOG_LEVEL"


def env_level(default: str = "INFO") -> str:
    """The level before the config is read (``OUBLI_LOG_LEVEL``); the config's ``log_level`` takes over after."""
    level = os.environ.get(LEVEL_VARIABLE, default).upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else default


def log_uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None,
                 thread: str | None = None) -> None:
    """One JSON line, through the redaction, instead of Python's plain traceback on stderr."""
    structlog.get_logger("oubli").error("uncaught_exception", error_type=kind.__name__, thread=thread,
                                        exc_info=(kind, error, trace))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        log_uncaught(args.exc_type, args.exc_value, args.exc_traceback,
                     thread=args.thread.name if args.thread is not None else None)


def install_excepthooks() -> None:
    """For the process (the CLI's entry point): uncaught errors of the main thread and of every other one."""
    sys.excepthook = log_uncaught
    threading.excepthook = _thread_hook


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or ``stream``), for oubli's own events and every library's. Called once."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(sort_keys=True)],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    kafka_clients = logging.getLogger(LIBRDKAFKA)
    for old_filter in [f for f in kafka_clients.filters if isinstance(f, RepeatFilter)]:
        kafka_clients.removeFilter(old_filter)
    kafka_clients.addFilter(RepeatFilter())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
