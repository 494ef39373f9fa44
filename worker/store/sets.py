"""Membership in a set of values, as one bound parameter on PostgreSQL whatever the set's size.

An IN list makes a statement of thousands of placeholders to build, send and parse, and a new statement
text (and, once run five times, a new prepared statement on the connection) for every size. ``= ANY(array)``
is one parameter and one text. SQLite keeps the IN list: it has no arrays, and no round trips to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def among(conn: sa.Connection, column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(array)``, an integer array for an integer column."""
    if conn.dialect.name == "postgresql":
        element = sa.Integer if isinstance(column.type, sa.Integer) else sa.Text
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(element)))
    return column.in_(list(values))


def among_bound(dialect: str, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``among`` for a statement built once per dialect (``functools.cache``): the values are bound at execution,
    as the parameter ``name``. Building a statement and its cache key took 25-50 µs, as long as some run."""
    if dialect == "postgresql":
        element = sa.Integer if isinstance(column.type, sa.Integer) else sa.Text
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(element)))
    return column.in_(sa.bindparam(name, expanding=True))


def pairs_among(conn: sa.Connection, first: sa.ColumnElement[Any], second: sa.ColumnElement[Any],
                pairs: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    """``(first, second) IN pairs``; on PostgreSQL against two unnested arrays.

    On PostgreSQL ``first`` is also matched against its own values: the pair test alone is a semi-join the
    planner runs over a scan of the whole table when its statistics are young (a claim's lock took 7–190 ms
    on a fresh store, every task against every pair), where ``first = ANY(...)`` reaches the rows through
    an index led by ``first``."""
    if conn.dialect.name == "postgresql":
        array = postgresql.ARRAY(sa.Text)
        firsts = [a for a, _ in pairs]
        zipped = sa.select(sa.func.unnest(sa.bindparam(None, firsts, type_=array)),
                           sa.func.unnest(sa.bindparam(None, [b for _, b in pairs], type_=array)))
        return sa.and_(among(conn, first, sorted(set(firsts))), sa.tuple_(first, second).in_(zipped))
    return sa.tuple_(first, second).in_(list(pairs))
