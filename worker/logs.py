"""Structured JSON logs, with a redaction processor as the last line of defence for personal data.

Code never logs personal data on purpose; the processor catches what slips through: values of
keys that name personal fields, and anything in any string that looks like an email or a phone.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

PERSONAL_KEYS = frozenset({
    "email", "emails", "phone", "phones", "customer_id", "subject", "identifiers", "name", "address",
    "first_name", "last_name", "birth_date", "ga_client_id", "facebook_user_id", "body", "value", "raw",
})
EMAIL = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w.])\+?\d[\d \-().]{7,}\d(?![\w.])")
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    return PHONE.sub(REDACTED, EMAIL.sub(REDACTED, text))


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


def configure(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr (or ``stream``). Called once, at start-up."""
    logging.basicConfig(level=level, stream=stream or sys.stderr, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
