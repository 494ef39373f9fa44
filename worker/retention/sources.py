"""A rule's databases: the subjects whose data has expired (streamed), what keeps them, who they are.

Every query is built from names in the rule (reflected tables and columns; no SQL in the config) on an
engine made from the system's own ``settings.url`` by the connectors' ``make_engine``, so the sweeper
reaches a database exactly as that system's connector does, with the same statement timeout.

Everything here blocks on a database. Failures are raised as the connectors' errors
(``connectors.sql_errors.db_error``): they name the system and the step, never a row value.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from connectors.sql import make_engine, reflect
from connectors.sql_config import SqlConfig, normalised_email_sql
from connectors.sql_errors import db_error
from worker.config import RetentionCheck, RetentionRule, SystemSettings
from worker.core.errors import ConfigError, OubliError

Period = tuple[int, int, int]  # years, months, days
Moment = TypeVar("Moment", date, datetime)
STREAM_ROWS = 1000


@dataclass(frozen=True)
class Expired:
    """A subject whose data is past the rule's period. ``at`` is the timestamp that made it expire."""

    key: str  # the customer id, or the normalised email
    at: datetime

    def __repr__(self) -> str:  # no personal data in tracebacks
        return f"Expired(at={self.at.isoformat()})"


def shift(moment: Moment, period: Period, sign: int) -> Moment:
    """Calendar arithmetic: years and months (clamped to the month's end: 29 Feb - 1 year = 28 Feb), then days."""
    years, months, days = period
    index = moment.month - 1 + sign * (12 * years + months)
    year, month = moment.year + index // 12, index % 12 + 1
    moved = moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))
    return moved + timedelta(days=sign * days)


def expires_at(expired: Expired, period: Period) -> datetime:
    return shift(expired.at, period, 1)


class Databases:
    """One engine per system (two connections: the streaming scan and the look-ups), and reflected tables."""

    def __init__(self, systems: Mapping[str, SystemSettings]) -> None:
        self._systems = systems
        self._engines: dict[str, sa.Engine] = {}
        self._tables: dict[tuple[str, str], sa.Table] = {}

    def engine(self, system: str) -> sa.Engine:
        if system not in self._engines:
            settings = self._systems[system].settings
            with guard(system, "database settings"):
                self._engines[system] = make_engine(SqlConfig(
                    url=settings["url"], tables=(), schema=settings.get("schema"), pool_size=2,
                    statement_timeout_ms=int(settings.get("statement_timeout_ms", 30_000)),
                    connect_timeout_s=int(settings.get("connect_timeout_s", 10)),
                ))
        return self._engines[system]

    def table(self, system: str, name: str) -> sa.Table:
        if (system, name) not in self._tables:
            with guard(system, f"reading table {name}"):
                tables = reflect(self.engine(system), [name], self._systems[system].settings.get("schema"))
            self._tables[(system, name)] = tables[name]
        return self._tables[(system, name)]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()


def stream_expired(conn: sa.Connection, table: sa.Table, rule: RetentionRule, as_of: datetime,
                   period: Period) -> Iterator[Expired]:
    """Subjects in key order, fetched ``STREAM_ROWS`` at a time through a server-side cursor.

    ``all_rows``: the subject's newest row is past the period. ``any_row``: its oldest is.
    """
    key = _key(table, rule)
    when = _latest_of([column(table, name) for name in rule.timestamp])
    cutoff = _cutoff(conn, when, as_of, period)
    present = sa.and_(key.is_not(None), key != "")
    at: sa.ColumnElement[Any]
    if rule.expires_when == "all_rows":
        at = sa.func.max(when)
        query = sa.select(key, at).where(present).group_by(key).having(at <= cutoff)
    else:
        at = sa.func.min(when)
        query = sa.select(key, at).where(present, when <= cutoff).group_by(key)
    with guard(rule.source, "retention scan"):
        result = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(query.order_by(key))
        for subject, moment in result:
            yield Expired(str(subject), _aware(moment))


def kept(db: Databases, rule: RetentionRule, check: RetentionCheck, keys: Sequence[str], as_of: datetime,
         period: Period) -> set[str]:
    """The keys that ``check`` keeps: a row exists, or (with ``newer``) a row is newer than the period."""
    system = check.system or rule.source
    table = db.table(system, check.table)
    key = _key(table, rule, check.key)
    with guard(system, "retention check"), db.engine(system).connect() as conn:
        query = sa.select(key).where(key.in_(keys)).distinct()
        if check.newer is not None:
            newer = column(table, check.newer)
            query = query.where(newer > _cutoff(conn, newer, as_of, period))
        return {str(k) for k in conn.execute(query).scalars()}


def contacts(db: Databases, rule: RetentionRule, keys: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """The emails and phones the rule's table holds for each key (for an email key: the key itself)."""
    found: dict[str, tuple[list[str], list[str]]] = {k: ([k] if rule.key.email else [], []) for k in keys}
    if not rule.emails and not rule.phones:
        return found
    table = db.table(rule.source, rule.table)
    key = _key(table, rule)
    emails = [column(table, name) for name in rule.emails]
    phones = [column(table, name) for name in rule.phones]
    with guard(rule.source, "retention contact details"), db.engine(rule.source).connect() as conn:
        for row in conn.execute(sa.select(key, *emails, *phones).where(key.in_(keys))):
            mine = found[str(row[0])]
            mine[0].extend(_strings(row[1:1 + len(emails)]))
            mine[1].extend(_strings(row[1 + len(emails):]))
    return found


@contextmanager
def guard(system: str, what: str) -> Iterator[None]:
    """Database failures as the connectors report them: system and step, never a value."""
    try:
        yield
    except OubliError:
        raise
    except Exception as exc:
        raise db_error(system, what, exc) from None


def column(table: sa.Table, name: str) -> sa.Column[Any]:
    try:
        return table.columns[name]
    except KeyError:
        raise ConfigError(f"retention: table {table.name} has no column {name}") from None


def _key(table: sa.Table, rule: RetentionRule, name: str | None = None) -> sa.ColumnElement[Any]:
    """The subject key in ``table`` (the rule's own key column unless ``name``); emails are compared
    normalised, as the connectors match them."""
    key = column(table, name or rule.key.customer_id or rule.key.email or "")
    return normalised_email_sql(key) if rule.key.email else key


def _latest_of(columns: list[sa.Column[Any]]) -> sa.ColumnElement[Any]:
    kinds = {_python_type(c) for c in columns}
    if len(kinds) != 1:
        raise ConfigError("retention: the timestamp columns of a rule must all be dates or all be date-times")
    latest: sa.ColumnElement[Any] = columns[0]
    for other in columns[1:]:  # portable GREATEST that ignores NULLs (SQLite's max(a, b) does not)
        latest = sa.case((other.is_(None), latest), (latest.is_(None), other), (other > latest, other), else_=latest)
    return latest


def _python_type(element: sa.ColumnElement[Any]) -> type:
    try:
        kind = element.type.python_type
    except NotImplementedError:
        kind = object
    if kind not in (date, datetime):
        raise ConfigError(f"retention: column {getattr(element, 'name', '?')} is not a date or date-time column")
    return kind


def _cutoff(conn: sa.Connection, element: sa.ColumnElement[Any], as_of: datetime, period: Period) -> date | datetime:
    """Rows dated at or before this are past the period (the orders_db connector's own rule for invoices)."""
    if _python_type(element) is date:
        return shift(as_of.astimezone(UTC).date(), period, -1)
    cutoff = shift(as_of.astimezone(UTC), period, -1)
    return cutoff.replace(tzinfo=None) if conn.dialect.name == "sqlite" else cutoff  # SQLite stores naive UTC


def _aware(moment: date | datetime) -> datetime:
    if isinstance(moment, datetime):
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return datetime.combine(moment, time(0), UTC)


def _strings(values: Iterable[Any]) -> list[str]:
    return [str(v).strip() for v in values if v is not None and str(v).strip()]
