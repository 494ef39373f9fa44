"""Email conditions for the SQL connectors: whitespace and case aside, any letter, on both stores.

Both sides of a match are folded by the same function: PostgreSQL's ``lower`` (a non-ASCII email
under the "C" collation is refused, ``email_case_unsupported``), SQLite's registered ``oubli_lower``
with every ASCII-case spelling listed so the index stays in use. Details: docs/architecture.md."""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql, strip_whitespace, stripped_sql
from worker.core.errors import NeedsPersonError

SQLITE_LOWER = "oubli_lower"
_PROBE = ("ÉΣ", "éσ")  # capitals outside ASCII, and their lower case
MAX_SPELLINGS = 64
_CONTEXTUAL = frozenset("\u03c2\u0307")  # final sigma; the dot that "İ".lower() adds


@dataclass(frozen=True)
class EmailValues:
    """One call's emails, ready to bind: the shape says which cached condition fits them."""

    stripped: tuple[str, ...]  # what PostgreSQL lowers itself, one bound parameter each
    wanted: tuple[str, ...]  # SQLite: lowered in Python
    spellings: tuple[str, ...] | None  # SQLite: the spellings an index can find, None when too many

    @classmethod
    def of(cls, dialect: str, emails: Iterable[str]) -> EmailValues:
        stripped = tuple(sorted({strip_whitespace(e) for e in emails if strip_whitespace(e)}))
        if dialect != "sqlite":
            return cls(stripped, (), None)
        wanted = tuple(sorted({e.lower() for e in stripped}))
        candidates = spellings(wanted)
        return cls(stripped, wanted, None if candidates is None else tuple(candidates))

    @property
    def shape(self) -> tuple[int, bool]:
        return len(self.stripped), self.spellings is not None

    def params(self, name: str) -> dict[str, Any]:
        """The values for ``EmailMatch.bound_condition(..., name)``."""
        bound: dict[str, Any] = {f"{name}_{i}": e for i, e in enumerate(self.stripped)}
        bound[f"{name}_wanted"] = list(self.wanted)
        bound[f"{name}_spellings"] = list(self.spellings or ())
        return bound


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

    def bound_condition(
        self, dialect: str, column: sa.Column[Any], shape: tuple[int, bool], name: str
    ) -> sa.ColumnElement[bool]:
        """The same condition as ``condition``, its values left as parameters named after ``name``
        (``EmailValues.params``), so it is built once per column and shape, not per call."""
        count, spelled = shape
        if dialect == "sqlite":
            lowered: sa.ColumnElement[Any] = getattr(sa.func, SQLITE_LOWER)(stripped_sql(column))
            exact = lowered.in_(sa.bindparam(f"{name}_wanted", expanding=True))
            if not spelled:
                return exact
            return sa.and_(normalised_email_sql(column).in_(sa.bindparam(f"{name}_spellings", expanding=True)), exact)
        literals = [sa.func.lower(sa.bindparam(f"{name}_{i}", type_=sa.String())) for i in range(count)]
        return normalised_email_sql(column).in_(literals)

    def check(self, conn: sa.Connection, column: sa.Column[Any], values: EmailValues) -> None:
        """Refuses what ``condition`` refuses: non-ASCII emails where PostgreSQL lowers only ASCII."""
        if conn.dialect.name != "sqlite" and not all(e.isascii() for e in values.stripped):
            self._check_folds(conn, column)

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
