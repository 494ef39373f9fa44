"""Time in oubli is timezone-aware UTC everywhere; these helpers keep it that way."""

from __future__ import annotations

import calendar
import functools
from datetime import UTC, datetime

# What a command's dates may be, in UTC. datetime ends at 9999-12-31; the year of margin keeps every
# later sum (a default due_at, leases, deadlines, presigned-URL expiry) from overflowing, and from
# year 1000 on every date prints as the four-digit year RFC 3339 requires.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class OutOfRange(ValueError):
    """A date outside ``EARLIEST``..``LATEST``, or one whose arithmetic would overflow."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, to the millisecond."""
    if moment is None:
        return None
    return _iso(moment)


# A batch of results writes one moment into every receipt it renders (updated_at, confirmed_at): the same
# few datetimes are formatted thousands of times a second. Equal datetimes are the same instant (a naive
# one, read as UTC, never equals an aware one), so they share one text.
@functools.lru_cache(maxsize=1024)
def _iso(moment: datetime) -> str:
    # isoformat in UTC ends with "+00:00"; it pads the year to four digits and truncates to the millisecond.
    return aware(moment).isoformat(timespec="milliseconds")[:-6] + "Z"


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything oubli stores is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse(text: str) -> datetime:
    """An RFC 3339 timestamp as aware UTC. ``ValueError`` if it is no timestamp, ``OutOfRange`` if its
    conversion to UTC overflows (9999-12-31T23:00:00-02:00)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    try:
        return aware(moment)
    except OverflowError:
        raise OutOfRange("the timestamp is outside the representable range once converted to UTC") from None


def in_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment <= LATEST:
        raise OutOfRange(f"the date is outside {EARLIEST.year}..{LATEST.year}")
    return moment


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    if not 1 <= year <= 9999:
        raise OutOfRange(f"adding {months} months leaves the representable years")
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
