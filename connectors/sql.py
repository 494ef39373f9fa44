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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import sqlalchemy as sa

from connectors import sql_email
from connectors.sql_config import (
    ColumnAction,
    Retention,
    SqlConfig,
    TableRule,
    parse,
)
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
from worker.core.errors import ConnectorError, NeedsPersonError, PermanentError
from worker.core.identifiers import keyed_hash
from worker.core.pooling import ping_after_idle

Condition = sa.ColumnElement[bool]
_T = TypeVar("_T")
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
            pool_size=config.pool_size,
            max_overflow=0,
            pool_timeout=30,
            hide_parameters=True,
            connect_args={"connect_timeout": config.connect_timeout_s},
        )

        ping_after_idle(engine)

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


@dataclass(frozen=True)
class _Shape:
    """What a call's conditions depend on besides its values; see ``SqlConnector._conditions``."""

    keys: bool
    emails: bool
    phones: bool


@dataclass(frozen=True)
class _Bound:
    shape: _Shape
    conditions: Mapping[str, Condition | None]  # per table, None when nothing reaches it
    params: dict[str, Any]  # the values of the conditions' bound parameters


def _rows_where(columns: Sequence[sa.Column[Any]], condition: Condition) -> sa.Select[Any]:
    return sa.select(*columns).where(condition)


# At most this many counts (subjects times the tables the rules check) in one statement of a batch's checks:
# SQLite allows 500 SELECTs in a compound one.
COUNTS_PER_STATEMENT = 400


def _cutoff(index: int) -> sa.BindParameter[Any]:
    """The bound last expired date of the retention of rule ``index`` (``SqlConnector._cutoffs``)."""
    return sa.bindparam(f"oubli_t{index}_cutoff")


class SqlConnector:
    def __init__(
        self, system: str, config: SqlConfig, context: ConnectorContext, engine: sa.Engine | None = None
    ) -> None:
        self.system = system
        self.config = config
        self._context = context
        self._engine = engine if engine is not None else make_engine(config)
        self._tables: dict[str, sa.Table] | None = None
        self._plans: dict[_Shape, dict[str, Condition | None]] = {}
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._built_for: tuple[SqlConfig, Mapping[str, sa.Table]] | None = None
        self._lock = threading.Lock()

    # -- the contract --------------------------------------------------------------------------
    def erase(self, subject: Subject) -> CallResult:
        salt = secrets.token_bytes(32)
        today = self._context.now().date()
        with self._guard("erasure"), self._engine.begin() as conn:
            tables = self._reflect(conn)
            bound = self._conditions(conn, tables, subject)
            params = {**bound.params, **self._cutoffs(today)}
            tally = _Tally()
            for index in reversed(range(len(self.config.tables))):
                rule = self.config.tables[index]
                condition = bound.conditions.get(rule.table)
                if condition is None or rule.erase == "keep":
                    continue
                key = (bound.shape, index)
                self._erase_table(conn, key, tables[rule.table], rule, condition, tally, salt, today, params)
        return tally.result()

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        records = 0
        with self._guard("export"), self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all tables
            with conn.begin():
                tables = self._reflect(conn)
                bound = self._conditions(conn, tables, subject)
                for index, rule in enumerate(self.config.tables):
                    condition = bound.conditions.get(rule.table)
                    if condition is None or not rule.export:
                        continue
                    table = tables[rule.table]
                    columns = [c for c in table.columns if c.name not in rule.export_exclude]
                    query = self._cached((bound.shape, index, "export"), partial(_rows_where, columns, condition))
                    rows = [dict(r) for r in conn.execute(query, bound.params).mappings()]
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
        (found,) = self.verify_many([subject])
        if isinstance(found, ConnectorError):
            raise found
        return found

    def verify_many(self, subjects: Sequence[Subject]) -> list[Sequence[Residue] | ConnectorError]:
        """On one connection, reflected once. The subjects of one shape are counted together: one statement for
        all their tables (``_lefts``), not one for each subject and table, which cost SQLAlchemy's run of a
        statement and a round trip each (the most of a burst's checks, py-spy)."""
        bounds: list[_Bound | ConnectorError] = []
        with self._guard("verification"), self._engine.connect() as conn:
            tables = self._reflect(conn)
            for subject in subjects:
                try:
                    bounds.append(self._conditions(conn, tables, subject))
                except ConnectorError as exc:  # this subject's own (an ambiguous match): the others go on
                    bounds.append(exc)
            counts = self._count_lefts(conn, tables, bounds)
        results: list[Sequence[Residue] | ConnectorError] = []
        for position, bound in enumerate(bounds):
            if isinstance(bound, ConnectorError):
                results.append(bound)
                continue
            # A table the subject's conditions reach has its count, or this raises: never a silent zero.
            results.append([Residue(rule.table, 0 if bound.conditions.get(rule.table) is None
                                    else counts[(position, index)])
                            for index, rule in enumerate(self.config.tables) if rule.erase != "keep"])
        return results

    def _count_lefts(self, conn: sa.Connection, tables: Mapping[str, sa.Table],
                     bounds: Sequence[_Bound | ConnectorError]) -> dict[tuple[int, int], int]:
        """(position in ``bounds``, table index) -> the rows left that an erasure should have removed or unlinked,
        for every subject bound and table its conditions reach: a statement for each shape, or for each
        ``COUNTS_PER_STATEMENT`` counts of it."""
        cutoffs = self._cutoffs(self._context.now().date())
        checked = sum(rule.erase != "keep" for rule in self.config.tables)
        together = max(1, COUNTS_PER_STATEMENT // max(1, checked))
        by_shape: dict[_Shape, list[tuple[int, _Bound]]] = {}
        for position, bound in enumerate(bounds):
            if isinstance(bound, _Bound):
                by_shape.setdefault(bound.shape, []).append((position, bound))
        counts: dict[tuple[int, int], int] = {}
        for shape, members in by_shape.items():
            for start in range(0, len(members), together):
                chunk = members[start:start + together]
                statement = self._cached((shape, "left", len(chunk)), partial(self._lefts, tables, shape, len(chunk)))
                if statement is None:
                    continue  # no table the rules check is reached by this shape
                params: dict[str, Any] = dict(cutoffs)
                for j, (_, bound) in enumerate(chunk):
                    params.update({f"{name}_{j}": value for name, value in bound.params.items()})
                for j, index, count in conn.execute(statement, params):
                    counts[(chunk[j][0], index)] = int(count)
        return counts

    def _lefts(self, tables: Mapping[str, sa.Table], shape: _Shape, subjects: int) -> sa.Executable | None:
        """For ``subjects`` subjects of ``shape`` (their values bound with the suffixes ``_0``, ``_1``...), the rows
        (subject, table index, count) of each table's rows that an erasure should have left none of; built once per
        shape and number of subjects. None when the shape reaches no table the rules check."""
        branches: list[sa.Select[int, int, int]] = []
        number = partial(sa.literal_column, type_=sa.Integer)
        for j in range(subjects):
            conditions = self._build_conditions(tables, shape, suffix=f"_{j}")
            for index, rule in enumerate(self.config.tables):
                condition = conditions.get(rule.table)
                if rule.erase == "keep" or condition is None:
                    continue
                table = tables[rule.table]
                branch = sa.select(number(str(j)), number(str(index)), sa.func.count())
                branches.append(branch.select_from(table).where(self._left(index, table, rule, condition)))
        if len(branches) <= 1:
            return branches[0] if branches else None
        return sa.union_all(*branches)

    def _left(self, index: int, table: sa.Table, rule: TableRule, condition: Condition) -> Condition:
        """Which of a subject's rows an erasure should have removed or unlinked: ``delete`` and ``anonymise`` leave
        none that match (anonymised rows lose their match columns); ``retain`` keeps rows within their date only,
        with the columns it nulls still null."""
        if rule.retention is None:
            return condition
        on = self._column(table, rule.retention.date_column)
        cutoff = _cutoff(index)
        left = sa.and_(condition, on <= cutoff)
        nulled = [self._column(table, name) for name, action in rule.columns.items() if action.kind == "null"]
        if nulled:
            kept = sa.and_(condition, sa.or_(on > cutoff, on.is_(None)))
            left = sa.or_(left, sa.and_(kept, sa.or_(*(c.is_not(None) for c in nulled))))
        return left

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
    # A call's conditions depend on its values only through a _Shape (which kinds of identifier it has):
    # per shape they are built once, their values left as bound parameters, and so
    # are the statements built on them. A call then only binds values, and SQLAlchemy finds the
    # compiled statement under a cache key it memoised on the statement.
    def _conditions(self, conn: sa.Connection, tables: Mapping[str, sa.Table], subject: Subject) -> _Bound:
        built_for = self._built_for
        if built_for is None or built_for[0] is not self.config or built_for[1] is not tables:
            # What was built holds the tables and the rule indexes: a new reflection or rule set starts afresh.
            self._plans, self._statements = {}, {}
            self._built_for = (self.config, tables)
        emails = sql_email.wanted(subject.emails)
        keys = self._customer_keys(conn, tables, subject, emails)
        phones = sorted({p.strip() for p in subject.phones if p.strip()})
        shape = _Shape(bool(keys), bool(emails), bool(phones))
        conditions = self._plans.get(shape)
        if conditions is None:
            conditions = self._plans.setdefault(shape, self._build_conditions(tables, shape))
        params: dict[str, Any] = {}
        for index, rule in enumerate(self.config.tables):
            match = rule.match
            if match.customer_id:
                params[f"oubli_t{index}_keys"] = keys
            if match.email and emails:
                params[f"oubli_t{index}_emails"] = emails
            if match.phone:
                params[f"oubli_t{index}_phones"] = phones
        return _Bound(shape, conditions, params)

    def _build_conditions(self, tables: Mapping[str, sa.Table], shape: _Shape,
                          suffix: str = "") -> dict[str, Condition | None]:
        """Each table's condition, its values bound as ``_conditions`` names them, plus ``suffix``."""
        conditions: dict[str, Condition | None] = {}
        for index, rule in enumerate(self.config.tables):  # parents first, so a via finds its parent's condition
            table, match = tables[rule.table], rule.match
            parts: list[Condition] = []
            if match.customer_id and shape.keys:
                keys: sa.BindParameter[Any] = sa.bindparam(f"oubli_t{index}_keys{suffix}", expanding=True)
                parts.append(self._column(table, match.customer_id).in_(keys))
            if match.email and shape.emails:
                column = self._column(table, match.email)
                parts.append(sql_email.bound_condition(column, f"oubli_t{index}_emails{suffix}"))
            if match.phone and shape.phones:
                phones: sa.BindParameter[Any] = sa.bindparam(f"oubli_t{index}_phones{suffix}", expanding=True)
                parts.append(self._column(table, match.phone).in_(phones))
            parent_condition = conditions.get(match.via.table) if match.via is not None else None
            if match.via is not None and parent_condition is not None:
                parent = tables[match.via.table]
                parent_rows = sa.select(self._column(parent, match.via.parent_column)).where(parent_condition)
                parts.append(self._column(table, match.via.column).in_(parent_rows))
            conditions[rule.table] = sa.or_(*parts) if parts else None
        return conditions

    def _customer_keys(
        self, conn: sa.Connection, tables: Mapping[str, sa.Table], subject: Subject, emails: list[str]
    ) -> list[str]:
        keys = [subject.customer_id] if subject.customer_id else []
        rule = self.config.subject
        if rule is None or not rule.email_fallback or not rule.email or not subject.emails:
            return keys
        accounts = tables[rule.table]
        key_column = self._column(accounts, rule.key)
        if keys:
            given: sa.BindParameter[Any] = sa.bindparam("oubli_keys", expanding=True)
            known = self._cached(
                ("subject", "key"), lambda: sa.select(key_column).where(key_column.in_(given)).limit(1)
            )
            if conn.execute(known, {"oubli_keys": keys}).first():
                return keys
        email_column = self._column(accounts, rule.email)
        if not emails:
            return keys  # no email to look for: the lookup would match nothing
        by_email = self._cached(
            ("subject", "email"),
            lambda: (
                sa.select(key_column)
                .where(sql_email.bound_condition(email_column, "oubli_emails"))
                .distinct()
                .limit(2)
            ),
        )
        found = conn.execute(by_email, {"oubli_emails": emails}).scalars().all()
        if len(found) > 1:
            raise NeedsPersonError(f"{self.system}: the subject's email matches several accounts", code="ambiguous")
        return keys + [str(k) for k in found]

    def _cutoffs(self, today: date) -> dict[str, date]:
        """The last date of each retention period that has run out, as ``_cutoff`` names them."""
        return {
            _cutoff(index).key: shift(today, rule.retention, -1)
            for index, rule in enumerate(self.config.tables)
            if rule.retention is not None
        }

    def _cached(self, key: tuple[Any, ...], build: Callable[[], _T]) -> _T:
        """The statement or condition under ``key``, built by ``build`` the first time. Threads may
        race to build one: both are the same, and the first stored is kept."""
        found = self._statements.get(key)
        if found is None:
            found = self._statements.setdefault(key, build())
        return cast(_T, found)

    # -- erasure per table -------------------------------------------------------------------
    def _erase_table(
        self,
        conn: sa.Connection,
        key: tuple[_Shape, int],
        table: sa.Table,
        rule: TableRule,
        condition: Condition,
        tally: _Tally,
        salt: bytes,
        today: date,
        params: Mapping[str, Any],
    ) -> None:
        if rule.erase == "retain":
            assert rule.retention is not None
            self._retain(conn, key, table, rule, rule.retention, condition, tally, salt, today, params)
            return
        if rule.erase == "anonymise":
            count = self._anonymise(conn, (*key, "anonymise"), table, condition, rule.columns, salt, params)
            tally.matched += count
            tally.anonymised += count
            return
        if rule.suppress:
            self._suppress(conn, key, table, rule.suppress, condition, params)
        delete = self._cached((*key, "delete"), lambda: sa.delete(table).where(condition))
        tally.matched += conn.execute(delete, params).rowcount

    def _retain(
        self,
        conn: sa.Connection,
        key: tuple[_Shape, int],
        table: sa.Table,
        rule: TableRule,
        retention: Retention,
        condition: Condition,
        tally: _Tally,
        salt: bytes,
        today: date,
        params: Mapping[str, Any],
    ) -> None:
        on = self._column(table, retention.date_column)
        cutoff = _cutoff(key[1])
        kept = self._cached((*key, "kept"), lambda: sa.and_(condition, sa.or_(on > cutoff, on.is_(None))))
        latest_and_count = self._cached(
            (*key, "latest"), lambda: sa.select(sa.func.max(on), sa.func.count(), sa.func.count(on)).where(kept)
        )
        latest, count, dated = conn.execute(latest_and_count, params).one()
        if count:
            candidates = [shift(as_date(latest), retention, 1)] if latest is not None else []
            if count > dated:  # no date recorded: retained from today, the most cautious reading
                candidates.append(shift(today, retention, 1))
            tally.retain(retention, max(candidates))
            tally.matched += count
            if rule.columns:
                self._anonymise(conn, (*key, "kept"), table, kept, rule.columns, salt, params)
        expired = self._cached((*key, "expired"), lambda: sa.and_(condition, on <= cutoff))
        if retention.expired == "delete":
            delete = self._cached((*key, "delete expired"), lambda: sa.delete(table).where(expired))
            tally.matched += conn.execute(delete, params).rowcount
        else:
            done = self._anonymise(conn, (*key, "expired"), table, expired, rule.expired_columns, salt, params)
            tally.matched += done
            tally.anonymised += done

    def _anonymise(
        self,
        conn: sa.Connection,
        key: tuple[_Shape, int, str],
        table: sa.Table,
        condition: Condition,
        actions: Mapping[str, ColumnAction],
        salt: bytes,
        params: Mapping[str, Any],
    ) -> int:
        """``key`` names the statements built here: one per shape, table and set of ``actions``."""
        fixed = {
            name: (None if a.kind == "null" else typed(a.value, self._column(table, name)))
            for name, a in actions.items()
            if a.kind in ("null", "set")
        }
        pseudonymised = [self._column(table, n) for n, a in actions.items() if a.kind == "pseudonymise"]
        if not pseudonymised:
            if not fixed:
                return 0
            update = self._cached((*key, "update"), lambda: sa.update(table).where(condition).values(fixed))
            return int(conn.execute(update, params).rowcount)
        primary = list(table.primary_key.columns)
        if not primary:
            raise PermanentError(f"{self.system}: pseudonymise needs a primary key on {table.name}", code="sql_config")
        select = self._cached((*key, "rows"), lambda: sa.select(*primary, *pseudonymised).where(condition))
        rows = conn.execute(select, params).all()

        def update_one() -> Any:
            where = sa.and_(*(c == sa.bindparam(f"oubli_pk_{i}") for i, c in enumerate(primary)))
            values: dict[str, Any] = dict(fixed)
            for j, column in enumerate(pseudonymised):
                values[column.name] = sa.bindparam(f"oubli_pseudonym_{j}", type_=column.type)
            return sa.update(table).where(where).values(values)

        update = self._cached((key[1], key[2], "by key"), update_one)  # the same for every shape
        for row in rows:
            values = {f"oubli_pk_{i}": row[i] for i in range(len(primary))}
            for j, column in enumerate(pseudonymised):
                values[f"oubli_pseudonym_{j}"] = pseudonym(salt, row[len(primary) + j], column)
            conn.execute(update, values)
        return len(rows)

    def _suppress(
        self,
        conn: sa.Connection,
        key: tuple[_Shape, int],
        table: sa.Table,
        column: str,
        condition: Condition,
        params: Mapping[str, Any],
    ) -> None:
        suppression = self.config.suppression
        assert suppression is not None
        target = self._reflect(conn)[suppression.table]
        hashed_column = self._column(target, suppression.column)
        emails = self._cached(
            (*key, "suppress"), lambda: sa.select(self._column(table, column)).where(condition).distinct()
        )
        values = conn.execute(emails, params).scalars()
        hashes = {suppression_hash(suppression.key, str(v)) for v in values if v}
        if not hashes:
            return
        listed = self._cached(
            ("suppression", "listed"),
            lambda: sa.select(hashed_column).where(hashed_column.in_(sa.bindparam("oubli_hashes", expanding=True))),
        )
        present = set(conn.execute(listed, {"oubli_hashes": sorted(hashes)}).scalars())
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
