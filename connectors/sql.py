"""A declarative SQL connector: one rule set per system (``connectors.sql_config``).

Erasure runs in one transaction, children first: per table ``delete``, ``anonymise``, ``retain``
(until a retention date, reported as ``Retained``) or ``keep``. Export reads every matching row in
one snapshot. ``verify`` and ``sightings`` follow from the same rules, so a new SQL system needs no
code to be checked. Outcomes and pseudonymisation: docs/architecture.md."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from connectors.sql_config import (
    ColumnAction,
    Retention,
    SqlConfig,
    TableRule,
    normalise_email,
    parse,
)
from connectors.sql_email import EmailMatch
from connectors.sql_errors import db_error
from worker.core.connector import (
    CallResult,
    ConnectorContext,
    ExportWriter,
    Residue,
    Result,
    Retained,
    Sighting,
    Subject,
)
from worker.core.errors import NeedsPersonError, PermanentError
from worker.core.identifiers import keyed_hash

Condition = sa.ColumnElement[bool]
SCAN_BATCH = 2000  # rows fetched at a time by the resurrection scan (a server-side cursor on PostgreSQL)

# SQLite cannot reflect expression indexes, and none is needed here. A process-wide filter, because
# catch_warnings() is not thread-safe and connectors reflect from several worker threads at once.
warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning)


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return SqlConnector(system_id, parse(system_id, settings), context)


def make_engine(config: SqlConfig) -> sa.Engine:
    """An engine with bounded waits everywhere: connect, pool checkout and each statement."""
    url = sa.make_url(config.url)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": config.connect_timeout_s})
    else:
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=config.pool_size,
            max_overflow=0,
            pool_timeout=30,
            hide_parameters=True,
            connect_args={"connect_timeout": config.connect_timeout_s},
        )

        @sa.event.listens_for(engine, "connect")
        def _timeouts(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {int(config.statement_timeout_ms)}")
                cursor.execute(f"SET lock_timeout = {int(config.statement_timeout_ms)}")
            dbapi_connection.commit()

    return engine


@dataclass
class _Tally:
    matched: int = 0
    anonymised: int = 0
    retained: dict[tuple[str, str], date] = field(default_factory=dict)

    def retain(self, retention: Retention, until: date) -> None:
        key = (retention.category, retention.legal_basis)
        self.retained[key] = max(until, self.retained.get(key, until))

    def result(self) -> Result:
        if self.retained:
            kept = tuple(Retained(c, basis, until) for (c, basis), until in sorted(self.retained.items()))
            return Result("retained", retained=kept)
        if not self.matched:
            return Result("not_found")
        return Result("anonymized" if self.anonymised else "erased")


class SqlConnector:
    def __init__(
        self, system: str, config: SqlConfig, context: ConnectorContext, engine: sa.Engine | None = None
    ) -> None:
        self.system = system
        self.config = config
        self._context = context
        self._engine = engine if engine is not None else make_engine(config)
        self._tables: dict[str, sa.Table] | None = None
        self._emails = EmailMatch(system)
        self._lock = threading.Lock()

    # -- the contract --------------------------------------------------------------------------
    def erase(self, subject: Subject) -> CallResult:
        salt = secrets.token_bytes(32)
        today = self._context.now().date()
        with self._guard("erasure"), self._engine.begin() as conn:
            tables = self._reflect(conn)
            conditions = self._conditions(conn, tables, subject)
            tally = _Tally()
            for rule in reversed(self.config.tables):
                condition = conditions.get(rule.table)
                if condition is None or rule.erase == "keep":
                    continue
                self._erase_table(conn, tables[rule.table], rule, condition, tally, salt, today)
        return tally.result()

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        records = 0
        with self._guard("export"), self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all tables
            with conn.begin():
                tables = self._reflect(conn)
                conditions = self._conditions(conn, tables, subject)
                for rule in self.config.tables:
                    condition = conditions.get(rule.table)
                    if condition is None or not rule.export:
                        continue
                    table = tables[rule.table]
                    columns = [c for c in table.columns if c.name not in rule.export_exclude]
                    rows = [dict(r) for r in conn.execute(sa.select(*columns).where(condition)).mappings()]
                    if rows:
                        writer.write_rows(rule.table, rows)
                        records += len(rows)
        return Result("exported", records=records) if records else Result("not_found")

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        raise PermanentError(f"{self.system}: SQL systems have no async jobs to poll", code="no_async")

    def close(self) -> None:
        self._engine.dispose()

    # -- verification and the resurrection scan (optional protocols of worker.core.connector) -------
    def verify(self, subject: Subject) -> Sequence[Residue]:
        today = self._context.now().date()
        found: list[Residue] = []
        with self._guard("verification"), self._engine.connect() as conn:
            tables = self._reflect(conn)
            conditions = self._conditions(conn, tables, subject)
            for rule in self.config.tables:
                condition = conditions.get(rule.table)
                if rule.erase == "keep":
                    continue
                left = 0 if condition is None else self._left(conn, tables[rule.table], rule, condition, today)
                found.append(Residue(rule.table, left))
        return found

    def _left(self, conn: sa.Connection, table: sa.Table, rule: TableRule, condition: Condition, today: date) -> int:
        """Rows an erasure should have removed or unlinked: ``delete`` and ``anonymise`` leave none that
        match (anonymised rows lose their match columns); ``retain`` keeps rows within their date only,
        with the columns it nulls still null."""
        if rule.retention is None:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one())
        on = self._column(table, rule.retention.date_column)
        cutoff = shift(today, rule.retention, -1)
        left = sa.and_(condition, on <= cutoff)
        nulled = [self._column(table, name) for name, action in rule.columns.items() if action.kind == "null"]
        if nulled:
            kept = sa.and_(condition, sa.or_(on > cutoff, on.is_(None)))
            left = sa.or_(left, sa.and_(kept, sa.or_(*(c.is_not(None) for c in nulled))))
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(left)).scalar_one())

    def sightings(self) -> Iterator[Sighting]:
        with self._guard("resurrection scan"), self._engine.connect() as conn:
            tables = self._reflect(conn)
            for rule in self.config.tables:
                if rule.erase not in ("delete", "anonymise"):
                    continue  # kept rows hold nothing personal; retained ones are kept on purpose
                kinds = [(k, c) for k, c in (("customer_id", rule.match.customer_id), ("email", rule.match.email),
                                             ("phone", rule.match.phone)) if c is not None]
                if not kinds:
                    continue  # reached only through a parent: its parent's row is what comes back
                columns = [self._column(tables[rule.table], c) for _, c in kinds]
                query = sa.select(*columns).where(sa.or_(*(c.is_not(None) for c in columns)))
                for row in conn.execution_options(yield_per=SCAN_BATCH).execute(query):
                    pairs = tuple((kind, str(v)) for (kind, _), v in zip(kinds, row, strict=True) if v is not None)
                    yield Sighting(rule.table, pairs)

    # -- matching ----------------------------------------------------------------------------
    def _conditions(
        self, conn: sa.Connection, tables: Mapping[str, sa.Table], subject: Subject
    ) -> dict[str, Condition | None]:
        self._emails.prepare(conn)
        keys = self._customer_keys(conn, tables, subject)
        emails = [e for e in subject.emails if normalise_email(e)]
        phones = sorted({p.strip() for p in subject.phones if p.strip()})
        conditions: dict[str, Condition | None] = {}
        for rule in self.config.tables:  # parents first, so a via finds its parent's condition
            table, match = tables[rule.table], rule.match
            parts: list[Condition] = []
            if match.customer_id and keys:
                parts.append(self._column(table, match.customer_id).in_(keys))
            if match.email and emails:
                parts.append(self._emails.condition(conn, self._column(table, match.email), emails))
            if match.phone and phones:
                parts.append(self._column(table, match.phone).in_(phones))
            parent_condition = conditions.get(match.via.table) if match.via is not None else None
            if match.via is not None and parent_condition is not None:
                parent = tables[match.via.table]
                parent_rows = sa.select(self._column(parent, match.via.parent_column)).where(parent_condition)
                parts.append(self._column(table, match.via.column).in_(parent_rows))
            conditions[rule.table] = sa.or_(*parts) if parts else None
        return conditions

    def _customer_keys(self, conn: sa.Connection, tables: Mapping[str, sa.Table], subject: Subject) -> list[str]:
        keys = [subject.customer_id] if subject.customer_id else []
        rule = self.config.subject
        if rule is None or not rule.email_fallback or not rule.email or not subject.emails:
            return keys
        accounts = tables[rule.table]
        key_column = self._column(accounts, rule.key)
        if keys and conn.execute(sa.select(key_column).where(key_column.in_(keys)).limit(1)).first():
            return keys
        found = (
            conn.execute(
                sa.select(key_column)
                .where(self._emails.condition(conn, self._column(accounts, rule.email), subject.emails))
                .distinct()
                .limit(2)
            )
            .scalars()
            .all()
        )
        if len(found) > 1:
            raise NeedsPersonError(f"{self.system}: the subject's email matches several accounts", code="ambiguous")
        return keys + [str(k) for k in found]

    # -- erasure per table -------------------------------------------------------------------
    def _erase_table(
        self,
        conn: sa.Connection,
        table: sa.Table,
        rule: TableRule,
        condition: Condition,
        tally: _Tally,
        salt: bytes,
        today: date,
    ) -> None:
        if rule.erase == "retain":
            assert rule.retention is not None
            self._retain(conn, table, rule, rule.retention, condition, tally, salt, today)
            return
        if rule.erase == "anonymise":
            count = self._anonymise(conn, table, condition, rule.columns, salt)
            tally.matched += count
            tally.anonymised += count
            return
        if rule.suppress:
            self._suppress(conn, table, rule.suppress, condition)
        tally.matched += conn.execute(sa.delete(table).where(condition)).rowcount

    def _retain(
        self,
        conn: sa.Connection,
        table: sa.Table,
        rule: TableRule,
        retention: Retention,
        condition: Condition,
        tally: _Tally,
        salt: bytes,
        today: date,
    ) -> None:
        on = self._column(table, retention.date_column)
        cutoff = shift(today, retention, -1)
        kept = sa.and_(condition, sa.or_(on > cutoff, on.is_(None)))
        latest, count, dated = conn.execute(
            sa.select(sa.func.max(on), sa.func.count(), sa.func.count(on)).where(kept)
        ).one()
        if count:
            candidates = [shift(as_date(latest), retention, 1)] if latest is not None else []
            if count > dated:  # no date recorded: retained from today, the most cautious reading
                candidates.append(shift(today, retention, 1))
            tally.retain(retention, max(candidates))
            tally.matched += count
            if rule.columns:
                self._anonymise(conn, table, kept, rule.columns, salt)
        expired = sa.and_(condition, on <= cutoff)
        if retention.expired == "delete":
            tally.matched += conn.execute(sa.delete(table).where(expired)).rowcount
        else:
            done = self._anonymise(conn, table, expired, rule.expired_columns, salt)
            tally.matched += done
            tally.anonymised += done

    def _anonymise(
        self,
        conn: sa.Connection,
        table: sa.Table,
        condition: Condition,
        actions: Mapping[str, ColumnAction],
        salt: bytes,
    ) -> int:
        fixed = {
            name: (None if a.kind == "null" else typed(a.value, self._column(table, name)))
            for name, a in actions.items()
            if a.kind in ("null", "set")
        }
        pseudonymised = [self._column(table, n) for n, a in actions.items() if a.kind == "pseudonymise"]
        if not pseudonymised:
            return conn.execute(sa.update(table).where(condition).values(fixed)).rowcount if fixed else 0
        primary = list(table.primary_key.columns)
        if not primary:
            raise PermanentError(f"{self.system}: pseudonymise needs a primary key on {table.name}", code="sql_config")
        rows = conn.execute(sa.select(*primary, *pseudonymised).where(condition)).all()
        for row in rows:
            values = dict(fixed)
            for offset, column in enumerate(pseudonymised, start=len(primary)):
                values[column.name] = pseudonym(salt, row[offset], column)
            where = sa.and_(*(c == row[i] for i, c in enumerate(primary)))
            conn.execute(sa.update(table).where(where).values(values))
        return len(rows)

    def _suppress(self, conn: sa.Connection, table: sa.Table, column: str, condition: Condition) -> None:
        suppression = self.config.suppression
        assert suppression is not None
        target = self._reflect(conn)[suppression.table]
        hashed_column = self._column(target, suppression.column)
        values = conn.execute(sa.select(self._column(table, column)).where(condition).distinct()).scalars()
        hashes = {suppression_hash(suppression.key, str(v)) for v in values if v}
        if not hashes:
            return
        present = set(conn.execute(sa.select(hashed_column).where(hashed_column.in_(sorted(hashes)))).scalars())
        now = self._context.now()
        missing = [
            {suppression.column: h, "suppressed_at": now, "reason": suppression.reason}
            for h in sorted(hashes - present)
        ]
        if missing:
            conn.execute(sa.insert(target), missing)

    # -- plumbing ------------------------------------------------------------------------------
    def _reflect(self, conn: sa.Connection) -> dict[str, sa.Table]:
        with self._lock:
            if self._tables is None:
                names = [rule.table for rule in self.config.tables]
                if self.config.suppression is not None:
                    names.append(self.config.suppression.table)
                if self.config.subject is not None and self.config.subject.table not in names:
                    names.append(self.config.subject.table)
                self._tables = reflect(conn, names, self.config.schema)
            return self._tables

    def _column(self, table: sa.Table, name: str) -> sa.Column[Any]:
        try:
            return table.columns[name]
        except KeyError:
            raise PermanentError(f"{self.system}: table {table.name} has no column {name}", code="sql_config") from None

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            raise db_error(self.system, what, exc) from None


def reflect(bind: sa.Connection | sa.Engine, names: list[str], schema: str | None = None) -> dict[str, sa.Table]:
    metadata = sa.MetaData(schema=schema)
    return {name: sa.Table(name, metadata, autoload_with=bind) for name in names}


def suppression_hash(key: bytes, email: str) -> str:
    """The suppression list's entry for an email: the same keyed hash as a tombstone's (worker.core.identifiers)."""
    return keyed_hash(key, "email", email)


def pseudonym(salt: bytes, value: Any, column: sa.Column[Any]) -> str | None:
    if value is None:
        return None
    token = "anon-" + hmac.new(salt, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:20]
    length = getattr(column.type, "length", None)
    return token[:length] if length else token


def typed(value: Any, column: sa.Column[Any]) -> Any:
    """A configured ``set`` value as the column's type: YAML may give ``"1970-01-01"`` for a DATE."""
    if not isinstance(value, str):
        return value
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    try:
        if python_type is datetime:
            return datetime.fromisoformat(value)
        if python_type is date:
            return date.fromisoformat(value)
    except ValueError:
        raise PermanentError(f"a configured value for {column.name} is not a valid date", code="sql_config") from None
    return value


def as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def shift(day: date, retention: Retention, sign: int) -> date:
    """``day`` moved by the retention period (calendar years, then days); 29 February lands on the 28th."""
    year = day.year + sign * retention.years
    try:
        moved = day.replace(year=year)
    except ValueError:
        moved = day.replace(year=year, day=28)
    return moved + timedelta(days=sign * retention.days)
