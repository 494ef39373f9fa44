"""Email conditions for the SQL connectors: whitespace and case aside, any letter, on both stores.

Both sides of a match are folded by the same function, so a match never depends on two case
mappings agreeing:

* PostgreSQL folds both with its ``lower``. The index on ``normalised_email_sql`` is still used,
  since the right-hand side is constant. ``lower`` follows the column's collation, and under "C"
  it folds only ASCII: a non-ASCII email is then refused (``email_case_unsupported``, a person
  looks) rather than answered ``not_found`` while the data is there.
* SQLite's ``lower`` knows only ASCII, so both sides go through Python's ``str.lower``, registered
  on the connection as ``oubli_lower``. No index can serve that on SQLite, the embedded,
  small-database case.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql, strip_whitespace, stripped_sql
from worker.errors import NeedsPersonError

SQLITE_LOWER = "oubli_lower"
_PROBE = ("ÉΣ", "éσ")  # capitals outside ASCII, and their lower case


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
            lowered: sa.ColumnElement[Any] = getattr(sa.func, SQLITE_LOWER)(stripped_sql(column))
            return lowered.in_(sorted({e.lower() for e in stripped}))
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


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
