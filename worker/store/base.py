"""The store's shared internals: request locks, task rows, derived status, receipts and audit.

Locking: a write that touches a request's tasks first locks the request row (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers anyway), so a request's status is always derived from a
consistent view of its tasks and its receipts enter the outbox in the order they happened.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa

from worker import receipts, states
from worker.config import Topics
from worker.states import RequestStatus, SystemState, TaskState
from worker.store import order, turns
from worker.store import staging as staging_tables
from worker.store.outbox import Outbox
from worker.store.records import NotFound, StoreConflict, TaskUpdate
from worker.store.schema import audit_events, outbox, requests, tasks
from worker.store.sets import among_bound

# From this many rows a bulk update goes by COPY into a temporary table (``StoreBase._update_many``). Below it, one
# statement of bound arrays: the shipped turn (``max_in_flight`` 64) writes up to 64 rows, and staging them cost it
# two statements more a turn (3.14 statements a request instead of 2.83) for the same throughput (bench/README.md).
STAGED_UPDATE_ROWS = 256
_TASK_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TaskState) if f.name != "max_attempts")


# The free texts a connector hands back, cut to what the tasks table and receipt.v1 hold. Written as they came, a
# longer one made PostgreSQL refuse the whole batch of results (value too long: never recorded, tried again and
# again) and SQLite publish a receipt that breaks its schema.
_TEXT_LIMITS = {"detail": receipts.DETAIL_MAX, "error_message": receipts.MESSAGE_MAX}
# Likewise a retained entry's texts: a plug-in connector's own words, or a ``connector: sql`` rule whose config
# spells its legal basis out, broke the closed receipt.v1 on the compacted topic.
_RETAINED_LIMITS = {"category": receipts.CATEGORY_MAX, "legal_basis": receipts.LEGAL_BASIS_MAX}


def task_values(version: int, after: TaskState, update: TaskUpdate) -> dict[str, Any]:
    """A task's columns after a transition and its call's update, lease released and version moved on."""
    # Field by field, not dataclasses.asdict: its deep copies cost more than the rest of a result's write.
    values: dict[str, Any] = {name: getattr(after, name) for name in _TASK_STATE_FIELDS}
    values.update(lease_owner=None, lease_expires_at=None, version=version + 1)
    if update.retained:
        values["retained_json"] = json.dumps([_retained_entry(entry) for entry in update.retained])
    for name in ("expected_by", "detail", "records", "confirmed_by"):
        if getattr(update, name) is not None:
            values[name] = getattr(update, name)
    for name, limit in _TEXT_LIMITS.items():
        if isinstance(values.get(name), str) and len(values[name]) > limit:
            values[name] = values[name][:limit]
    return values


def _retained_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value[:_RETAINED_LIMITS[name]] if name in _RETAINED_LIMITS and isinstance(value, str) else value
            for name, value in entry.items()}


class StoreBase:
    def __init__(self, engine: sa.Engine, *, topics: Topics, policy: states.RetryPolicy, actor: str) -> None:
        self.engine = engine
        self.topics = topics
        self.policy = policy
        self.actor = actor
        self.outbox = Outbox(engine, actor=actor)

    def _lock_request(self, conn: sa.Connection, request_id: str) -> dict[str, Any]:
        row = conn.execute(
            sa.select(requests).where(requests.c.request_id == request_id).with_for_update()
        ).mappings().first()
        if row is None:
            raise NotFound(f"no request {request_id}")
        return dict(row)

    def _open_request(self, conn: sa.Connection, request_id: str) -> dict[str, Any]:
        request = self._lock_request(conn, request_id)
        if RequestStatus(request["status"]) in states.TERMINAL_STATUSES:
            raise StoreConflict(f"request {request_id} is {request['status']}; a terminal request cannot change")
        return request

    @staticmethod
    def _task_rows(conn: sa.Connection, request_id: str) -> list[dict[str, Any]]:
        return dicts(conn.execute(sa.select(tasks).where(tasks.c.request_id == request_id).order_by(tasks.c.system)))

    @staticmethod
    def _task_rows_of(conn: sa.Connection, request_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The task rows of many requests in one statement, by request (one with none is absent)."""
        by_request: dict[str, list[dict[str, Any]]] = {}
        for row in dicts(conn.execute(_tasks_of_statement(conn.dialect.name), {"ids": list(request_ids)})):
            by_request.setdefault(row["request_id"], []).append(row)
        return by_request

    @staticmethod
    def _write_task(conn: sa.Connection, request_id: str, system: str, version: int, after: TaskState,
                    update: TaskUpdate) -> dict[str, Any]:
        """Writes a task's new state; returns the values written, for the caller's copy of the row."""
        values = task_values(version, after, update)
        conn.execute(tasks.update().where(tasks.c.request_id == request_id, tasks.c.system == system)
                     .values(**values))
        return values

    def _refresh_request(self, conn: sa.Connection, request: Mapping[str, Any], now: datetime, *,
                         rows: list[dict[str, Any]] | None = None, changes: Mapping[str, Any] | None = None,
                         force_receipt: bool = False) -> RequestStatus:
        """Derives the request's status from its tasks; purges personal data when it turns terminal.

        ``rows`` are the request's task rows as this transaction left them, when the caller has them:
        passing them saves reading them back twice per write, which is most of a write's round trips.
        ``changes`` are other columns of the request to write in the same statement.
        """
        if rows is None:
            rows = self._task_rows(conn, request["request_id"])
        status = states.request_status((SystemState(r["state"]) for r in rows),
                                       any_attempted=any(r["attempts"] > 0 for r in rows))
        changed = status != request["status"]
        values: dict[str, Any] = {**(changes or {}), "updated_at": now, "status": status}
        if status in states.TERMINAL_STATUSES:
            # The orchestrator forgets too: personal data goes with the terminal state.
            values.update(completed_at=now, subject_json=None, reason=None, purged_at=now)
        conn.execute(requests.update().where(requests.c.request_id == request["request_id"]).values(**values))
        self._keep_order(conn, rows)
        if changed and status in states.TERMINAL_STATUSES:
            turns.release_turns(conn, [request["subject_ref"]])
        if changed:
            self._audit(conn, request["request_id"], None, now, "status_changed", from_state=request["status"],
                        to_state=status)
        if changed or force_receipt:
            self._enqueue_receipt(conn, request["request_id"], now, request={**request, **values}, rows=rows)
        return status

    def _keep_order(self, conn: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keeps ``tasks.blocked`` of ``rows`` (every task of their requests, as this transaction leaves them) in step
        with their siblings' states (``worker.store.order``): one statement, only when one is out of step."""
        self._update_many(conn, tasks, ("request_id", "system"), ("blocked",), order.changes(rows))

    def _enqueue_receipt(self, conn: sa.Connection, request_id: str, now: datetime, *,
                         request: Mapping[str, Any] | None = None, rows: list[dict[str, Any]] | None = None) -> None:
        if request is None:
            request = dict(conn.execute(sa.select(requests).where(requests.c.request_id == request_id))
                           .mappings().one())
        receipt = receipts.render(request, rows if rows is not None else self._task_rows(conn, request_id))
        conn.execute(outbox.insert().values(
            topic=self.topics.receipts, key=request_id.encode(), value=receipts.encode(receipt), created_at=now,
            headers_json=json.dumps([("x-oubli-status", receipt["status"])]),
        ))

    # --- set-based writes: one statement for many rows ------------------------------------------

    def _audit_row(self, request_id: str, system: str | None, now: datetime, action: str, *,
                   actor: str | None = None, from_state: str | None = None, to_state: str | None = None,
                   attempt: int | None = None, error_code: str | None = None,
                   detail: str | None = None) -> dict[str, Any]:
        return {"request_id": request_id, "system": system, "at": now, "actor": actor or self.actor,
                "action": action, "from_state": from_state, "to_state": to_state, "attempt": attempt,
                "error_code": error_code, "detail": detail[:1000] if detail else None}

    @classmethod
    def _insert_many(cls, conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]],
                     returning: Sequence[str] = ()) -> list[sa.Row[Any]]:
        """Inserts many rows in one statement; returns ``returning`` columns of each row, in order.

        PostgreSQL: ``COPY`` when nothing is returned (the driver formats its rows in C), otherwise ``INSERT ...
        SELECT FROM unnest(arrays) WITH ORDINALITY ORDER BY``, one parameter per column, so the statement
        text is short and the same for any number of rows. Either way defaults such as a serial key are
        drawn in the rows' order. SQLite: executemany, which costs no round trips there.
        """
        if not rows:
            return []
        names = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
        if conn.dialect.name != "postgresql":
            if not returning:
                conn.execute(table.insert(), [{n: row.get(n) for n in names} for row in rows])
                return []
            statement = table.insert().returning(*(table.c[n] for n in returning), sort_by_parameter_order=True)
            return list(conn.execute(statement, [{n: row.get(n) for n in names} for row in rows]).all())
        columns = ", ".join(f'"{n}"' for n in names)
        if not returning:
            _copy_rows(conn, f'COPY "{table.name}" ({columns}) FROM STDIN (FORMAT BINARY)', names, rows,
                       [table.c[n].type for n in names])
            return []
        arrays = {f"a{i}": [_plain(row.get(n)) for row in rows] for i, n in enumerate(names)}
        result = conn.execute(_insert_returning_statement(table, tuple(names), tuple(returning)), arrays)
        return list(result.all())

    def _receipt_row(self, request: Mapping[str, Any], rows: Iterable[Mapping[str, Any]],
                     now: datetime) -> dict[str, Any]:
        receipt = receipts.render(request, rows)
        return {"topic": self.topics.receipts, "key": request["request_id"].encode(),
                "value": receipts.encode(receipt), "created_at": now,
                "headers_json": json.dumps([("x-oubli-status", receipt["status"])])}

    @staticmethod
    def _update_many(conn: sa.Connection, table: sa.Table, keys: Sequence[str], columns: Sequence[str],
                     rows: Sequence[Mapping[str, Any]], *, guard: str | None = None,
                     owner: str | None = None) -> int:
        """Writes ``columns`` of many rows, matched on ``keys``, in one statement on PostgreSQL.

        ``guard`` names a column whose current value must equal the row's ``"_" + guard`` (a version
        compare-and-set). ``owner``: only rows whose ``lease_owner`` it is. Returns the number of rows written.
        """
        if not rows:
            return 0
        if conn.dialect.name != "postgresql":
            where = [table.c[k] == sa.bindparam(f"k_{k}") for k in keys]
            if guard is not None:
                where.append(table.c[guard] == sa.bindparam(f"g_{guard}"))
            if owner is not None:
                where.append(table.c["lease_owner"] == owner)
            statement = table.update().where(*where).values({c: sa.bindparam(f"v_{c}") for c in columns})
            params = [{**{f"k_{k}": r[k] for k in keys}, **{f"v_{c}": _plain(r[c]) for c in columns},
                       **({f"g_{guard}": r["_" + guard]} if guard is not None else {})} for r in rows]
            written = 0
            for param in params:  # SQLite: no round trips to save, and rowcount per row stays exact
                written += conn.execute(statement, param).rowcount
            return written
        names = [*keys, *columns, *([f"_{guard}"] if guard is not None else [])]
        sources = [*keys, *columns, *([guard] if guard is not None else [])]
        parameters: dict[str, Any] = {"leading": sorted({r[keys[0]] for r in rows})}
        if owner is not None:
            parameters["owner"] = owner
        staging = None
        if len(rows) >= STAGED_UPDATE_ROWS and _may_stage(conn):
            # Many rows go by COPY into a temporary table, then one UPDATE ... FROM it: the driver formats COPY
            # rows in C, where it built text arrays element by element in Python (measured: 82 against 127 ms
            # for 3,000 task rows). Arrays now go in binary (``db.create_engine``), and the two measured the
            # same in the loop (bench/README.md, sixth round). Few rows do not repay the table's extra statement.
            staging = staging_tables.table(conn, table, names, sources)
            _copy_rows(conn, f'COPY "{staging}" FROM STDIN (FORMAT BINARY)', names, rows,
                       [table.c[src].type for src in sources])
        else:
            # UPDATE ... FROM unnest(arrays): one statement, one plan, whatever the row count.
            parameters.update({f"a{i}": [_plain(r[n]) for r in rows] for i, n in enumerate(names)})
        update = _bulk_update_statement(table, tuple(keys), tuple(columns), guard, owner is not None, staging)
        return conn.execute(update, parameters).rowcount

    def _audit(self, conn: sa.Connection, request_id: str, system: str | None, now: datetime, action: str, *,
               actor: str | None = None, from_state: str | None = None, to_state: str | None = None,
               attempt: int | None = None, error_code: str | None = None, detail: str | None = None) -> None:
        conn.execute(audit_events.insert().values(
            request_id=request_id, system=system, at=now, actor=actor or self.actor, action=action,
            from_state=from_state, to_state=to_state, attempt=attempt, error_code=error_code,
            detail=detail[:1000] if detail else None,
        ))


def dicts(result: sa.Result[Any]) -> list[dict[str, Any]]:
    """A result's rows as plain dicts, zipped with its keys: a third of the cost of ``dict(row_mapping)``
    (1.5 against 4.3 µs for a task row), and the claims and results copy about twenty rows per request."""
    keys = list(result.keys())
    # all(), not iteration: the driver then loads every row in one call instead of a fetchone() each.
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


@functools.lru_cache(maxsize=128)
def _insert_returning_statement(table: sa.Table, names: tuple[str, ...], returning: tuple[str, ...]) -> sa.TextClause:
    """``_insert_many``'s statement when it returns columns, built once for each shape (as the bulk updates')."""
    columns = ", ".join(f'"{n}"' for n in names)
    casts = ", ".join(f"CAST(:a{i} AS {_pg_array_type(table.c[n].type)})" for i, n in enumerate(names))
    return sa.text(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM unnest({casts}) '  # noqa: S608
                   f"WITH ORDINALITY AS v({columns}, ord) ORDER BY ord RETURNING "
                   + ", ".join(f'"{n}"' for n in returning))


@functools.lru_cache(maxsize=128)
def _bulk_update_statement(table: sa.Table, keys: tuple[str, ...], columns: tuple[str, ...], guard: str | None,
                           owned: bool, staging: str | None) -> sa.TextClause:
    """``_update_many``'s statement on PostgreSQL, from a staging table or from bound arrays; built once for each
    shape, as a loop turn runs the same few: its text and the scan of it for parameters cost about as much CPU as
    the statement's run. Identifiers only (the table's own column names); every value comes by COPY or is bound."""
    names = [*keys, *columns, *([f"_{guard}"] if guard is not None else [])]
    sources = [*keys, *columns, *([guard] if guard is not None else [])]
    conditions = [f't."{k}" = v."{k}"' for k in keys]
    # The first key (which leads the table's primary key or a unique index) also against its own values:
    # otherwise the planner, on a store that grew faster than its statistics, joined by hashing a scan of
    # the whole table (4.5 ms a claim after a 5,000-request burst) instead of probing the index.
    conditions.append(f't."{keys[0]}" = ANY(CAST(:leading AS {_pg_array_type(table.c[keys[0]].type)}))')
    if guard is not None:
        conditions.append(f't."{guard}" = v."_{guard}"')
    if owned:
        conditions.append('t."lease_owner" = :owner')
    assignments = ", ".join(f'"{c}" = v."{c}"' for c in columns)
    if staging is not None:
        source = f'"{staging}" AS v'
    else:
        casts = ", ".join(f"CAST(:a{i} AS {_pg_array_type(table.c[src].type)})" for i, src in enumerate(sources))
        alias = ", ".join(f'"{n}"' for n in names)
        source = f"unnest({casts}) AS v({alias})"
    return sa.text(f'UPDATE "{table.name}" AS t SET {assignments} FROM {source} '  # noqa: S608
                   f"WHERE {' AND '.join(conditions)}")


def _may_stage(conn: sa.Connection) -> bool:
    """Whether this session may create temporary tables: a database that revokes TEMPORARY from the worker's
    role keeps every bulk update on bound arrays. Asked once per pooled connection."""
    allowed = conn.info.get("oubli_may_stage")
    if allowed is None:
        allowed = bool(conn.execute(sa.text(
            "SELECT has_database_privilege(current_user, current_database(), 'TEMPORARY')")).scalar())
        conn.info["oubli_may_stage"] = allowed
    return bool(allowed)


def _copy_rows(conn: sa.Connection, statement: str, names: Sequence[str], rows: Sequence[Mapping[str, Any]],
               types: Sequence[sa.types.TypeEngine[Any]]) -> None:
    """``COPY ... FROM STDIN (FORMAT BINARY)`` on the transaction's own connection, with the driver's errors raised
    as SQLAlchemy's (so ``faults.is_outage`` sorts them as for any statement) and a broken connection
    invalidated, as SQLAlchemy does for the statements it runs itself.

    Binary, typed by the columns: the driver's text format spelled every value out (a timestamp as ISO text),
    5 times the client's CPU of the binary one (13.5 against 2.7 ms for 10,000 audit rows), about a tenth of
    the loop thread's time in a burst (bench/README.md, thirteenth round)."""
    raw: Any = conn.connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([_pg_copy_type(t) for t in types])
            # As they are: the driver writes a state (a StrEnum, so a str) as its text.
            for row in rows:
                copy.write_row(list(map(row.get, names)))
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.errors.UndefinedTable):
            staging_tables.forget(conn)
        broken = bool(raw.closed or raw.broken)
        if broken:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error, connection_invalidated=broken,
                                         dialect=conn.dialect) from exc


def _pg_copy_type(column_type: sa.types.TypeEngine[Any]) -> str:
    """The PostgreSQL type a binary ``COPY`` sends a column's values as: the column's own, to the byte width."""
    if isinstance(column_type, sa.LargeBinary):
        return "bytea"
    if isinstance(column_type, sa.DateTime):
        return "timestamptz" if column_type.timezone else "timestamp"
    if isinstance(column_type, sa.BigInteger):
        return "int8"
    if isinstance(column_type, sa.SmallInteger):
        return "int2"
    if isinstance(column_type, sa.Integer):
        return "int4"
    if isinstance(column_type, sa.Boolean):
        return "bool"
    if isinstance(column_type, sa.Float):  # Double too
        return "float8" if isinstance(column_type, sa.Double) else "float4"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.String):  # Text and the enums' varchar too: one wire format for all of them
        return "text"
    raise TypeError(f"no binary COPY type for {column_type!r}")


def _pg_array_type(column_type: sa.types.TypeEngine[Any]) -> str:
    """The array type bound arrays of a column's values are cast to: the column's own type, as COPY sends it."""
    return _pg_copy_type(column_type) + "[]"


def _plain(value: Any) -> Any:
    """A state enum as its value: an array of them must bind as text."""
    return value.value if isinstance(value, enum.Enum) else value


@functools.cache
def _tasks_of_statement(dialect: str) -> sa.Select[Any]:
    """The task rows of the requests bound as ``ids``, in (request, system) order (built once per dialect)."""
    return (sa.select(tasks).where(among_bound(dialect, tasks.c.request_id, "ids"))
            .order_by(tasks.c.request_id, tasks.c.system))
