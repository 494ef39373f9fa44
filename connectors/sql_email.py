"""Email conditions for the SQL connectors: whitespace and ASCII case aside, the same on both stores.

The column side is ``normalised_email_sql``, the value side ``normalise_email`` in Python: both lower
A-Z and nothing else (``worker.core.identifiers`` says why), so no collation or Unicode table decides
whose rows match, and the index on ``normalised_email_sql`` serves every condition."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from connectors.sql_config import normalise_email, normalised_email_sql


def wanted(emails: Iterable[str]) -> list[str]:
    """The subject's emails as ``normalised_email_sql`` spells a matching row; blank ones left out."""
    return sorted({normalised for normalised in map(normalise_email, emails) if normalised})


def condition(column: sa.ColumnElement[Any], emails: Iterable[str]) -> sa.ColumnElement[bool]:
    return normalised_email_sql(column).in_(wanted(emails))


def bound_condition(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``condition`` with its values left as the expanding parameter ``name``: bind ``wanted(emails)``."""
    return normalised_email_sql(column).in_(sa.bindparam(name, expanding=True))
