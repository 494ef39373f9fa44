"""Email conditions for the SQL connectors: whitespace and case aside, any letter, on both stores.

Both sides of a match are folded by the same function: PostgreSQL's ``lower`` (a non-ASCII email
under the "C" collation is refused, ``email_case_unsupported``), SQLite's registered ``oubli_lower``
with every ASCII-case spelling listed so the index stays in use. Details: docs/architecture.md."""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql, strip_whitespace, stripped_sql
from worker.core.errors import NeedsPersonError

SQLITE_LOWER = "oubli_lower"
_PROBE = ("ÉΣ", "éσ")  # capitals outside ASCII, and their lower case
MAX_SPELLINGS = 64
_CONTEXTUAL = frozenset("\u03c2\u0307")  # final sigma; the dot that "İ".lower() adds


class EmailMatch:
    """Builds one connector's email conditions; remembers which PostgreSQL columns fold non-ASCII."""

    def __init__(self, system: str) -> None:
        self.system = system
        self._folds: dict[tuple[str, str], bool] = {}

    def prepare(self, conn: sa.Connection) -> None:
        """Call once per connection before ``condition``: a pool may hand out a new SQLite connection."""
        if conn.dialect.name == "sqlite":
            driver: Any = conn.connection.driver_connection  # a sqlite3.Connection
            driver.create_function(SQLITE_LOWER, 1, _lower, deterministic=True)

    def condition(self, conn: sa.Connection, column: sa.Column[Any], emails: Iterable[str]) -> sa.ColumnElement[bool]:
        stripped = sorted({strip_whitespace(e) for e in emails if strip_whitespace(e)})
        if conn.dialect.name == "sqlite":
            wanted = sorted({e.lower() for e in stripped})
            lowered: sa.ColumnElement[Any] = getattr(sa.func, SQLITE_LOWER)(stripped_sql(column))
            exact = lowered.in_(wanted)
            candidates = spellings(wanted)
            return exact if candidates is None else sa.and_(normalised_email_sql(column).in_(candidates), exact)
        if not all(e.isascii() for e in stripped):
            self._check_folds(conn, column)
        return normalised_email_sql(column).in_([sa.func.lower(sa.literal(e)) for e in stripped])

    def _check_folds(self, conn: sa.Connection, column: sa.Column[Any]) -> None:
        key = (column.table.name, column.name)
        if key not in self._folds:
            probe = sa.func.lower(sa.cast(sa.literal(_PROBE[0]), column.type))
            self._folds[key] = conn.execute(sa.select(probe)).scalar() == _PROBE[1]
        if not self._folds[key]:
            raise NeedsPersonError(
                f"{self.system}: the collation of {key[0]}.{key[1]} lowers only ASCII letters, "
                "so an email with other letters cannot be matched whatever its case",
                code="email_case_unsupported",
            )


def spellings(wanted: Iterable[str]) -> list[str] | None:
    """Every string, ASCII letters in lower case, whose ``str.lower`` may be one of ``wanted``.

    SQLite's own ``lower`` of any row that matches is one of these, so an index on it finds the
    rows. ``None`` when there would be more than ``MAX_SPELLINGS``, or the fold is contextual.
    """
    found: list[str] = []
    for email in wanted:
        if _CONTEXTUAL.intersection(email):
            return None
        options = [(char, *_upper_forms().get(char, ())) for char in email]
        count = 1
        for option in options:
            count *= len(option)
        if len(found) + count > MAX_SPELLINGS:
            return None
        found += ["".join(spelling) for spelling in itertools.product(*options)]
    return sorted(set(found))


@functools.cache
def _upper_forms() -> dict[str, tuple[str, ...]]:
    """For a lower-case letter, the non-ASCII characters whose ``str.lower`` it is (É for é, K for k)."""
    forms: dict[str, list[str]] = {}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        lower = char.lower()
        if lower != char and len(lower) == 1:
            forms.setdefault(lower, []).append(char)
    return {lower: tuple(chars) for lower, chars in forms.items()}


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
