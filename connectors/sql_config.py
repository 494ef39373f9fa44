"""The rule set of the declarative SQL connector, parsed once from config into frozen values.

A system is a list of tables, parents first; each says how its rows reach the subject (``match``:
``customer_id``, ``email``, ``phone`` or ``via`` a parent, OR-ed), what erasure does to them
(``erase``: delete, anonymise, retain, keep) and, for rows that stay, what happens to each column.
A full example is in docs/architecture.md (module notes)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from worker.core.errors import ConfigError

# One normalisation for matching, the suppression list and the tombstones; still importable from here.
from worker.core.identifiers import ASCII_LOWER, ASCII_UPPER
from worker.core.identifiers import WHITESPACE as WHITESPACE
from worker.core.identifiers import normalise_email as normalise_email
from worker.core.identifiers import strip_whitespace as strip_whitespace

Erase = Literal["delete", "anonymise", "retain", "keep"]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# receipt.v1's bounds on a retained entry's category and legal_basis (worker.receipts holds the same two).
CATEGORY_MAX, LEGAL_BASIS_MAX = 64, 200


def stripped_sql(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # Inline literals, not bound parameters: the query must spell the same expression as the index
    # on it (``devkit.shop_schemas``), or PostgreSQL will not use that index.
    expression: sa.ColumnElement[Any] = column
    for char in WHITESPACE:
        expression = sa.func.replace(
            expression, sa.literal(char, literal_execute=True), sa.literal("", literal_execute=True)
        )
    return expression


def normalised_email_sql(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The SQL twin of ``normalise_email`` (whitespace removed, A-Z lowered, nothing else) for conditions
    and indexes, the same on SQLite and PostgreSQL. Compare it with ``normalise_email`` of the value."""
    return AsciiLower(stripped_sql(column))


class AsciiLower(sa.sql.functions.FunctionElement[str]):
    """Lowers A-Z only, whatever the collation: PostgreSQL's ``lower`` folds other letters too."""

    type = sa.String()
    name = "ascii_lower"
    inherit_cache = True


@compiles(AsciiLower)
def _translate(element: AsciiLower, compiler: SQLCompiler, **kw: Any) -> str:
    # Inline literals, for the same reason as in ``stripped_sql``: the index must spell the same expression.
    return f"translate({compiler.process(element.clauses, **kw)}, '{ASCII_UPPER}', '{ASCII_LOWER}')"


@compiles(AsciiLower, "sqlite")
def _sqlite_lower(element: AsciiLower, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite has no translate(), and its built-in lower() folds ASCII only (without the ICU extension).
    return f"lower({compiler.process(element.clauses, **kw)})"


@dataclass(frozen=True)
class ColumnAction:
    kind: Literal["null", "pseudonymise", "keep", "set"]
    value: Any = None


@dataclass(frozen=True)
class Via:
    table: str
    column: str
    parent_column: str


@dataclass(frozen=True)
class Match:
    customer_id: str | None = None
    email: str | None = None
    phone: str | None = None
    via: Via | None = None


@dataclass(frozen=True)
class Retention:
    category: str
    legal_basis: str
    date_column: str
    years: int = 0
    days: int = 0
    expired: Literal["delete", "anonymise"] = "delete"


@dataclass(frozen=True)
class TableRule:
    table: str
    match: Match
    erase: Erase
    columns: Mapping[str, ColumnAction] = field(default_factory=dict)
    retention: Retention | None = None
    expired_columns: Mapping[str, ColumnAction] = field(default_factory=dict)
    suppress: str | None = None
    export: bool = True
    export_exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubjectRule:
    """Where accounts live; ``email_fallback`` finds the account by email when the id is unknown."""

    table: str
    key: str
    email: str | None = None
    email_fallback: bool = False


@dataclass(frozen=True)
class Suppression:
    table: str
    column: str
    key: bytes = field(repr=False)
    reason: str = "erasure"


@dataclass(frozen=True)
class SqlConfig:
    url: str = field(repr=False)
    tables: tuple[TableRule, ...]
    schema: str | None = None
    subject: SubjectRule | None = None
    suppression: Suppression | None = None
    statement_timeout_ms: int = 30_000
    connect_timeout_s: int = 10
    pool_size: int = 4

    def rule(self, table: str) -> TableRule:
        for rule in self.tables:
            if rule.table == table:
                return rule
        raise ConfigError(f"no rule for table {table}")


CONNECTION_SETTINGS = ("url", "schema", "statement_timeout_ms", "connect_timeout_s", "pool_size")


def preset(
    system_id: str, settings: Mapping[str, Any], rule_set: Mapping[str, Any], own: frozenset[str] = frozenset()
) -> SqlConfig:
    """A built-in rule set (``connectors.orders_db`` and friends) plus the connection settings."""
    unknown = sorted(set(settings) - set(CONNECTION_SETTINGS) - own)
    if unknown:
        raise ConfigError(f"system {system_id}: unknown settings {', '.join(map(str, unknown))}")
    return parse(system_id, {**rule_set, **{k: settings[k] for k in CONNECTION_SETTINGS if k in settings}})


def parse(system_id: str, raw: Mapping[str, Any]) -> SqlConfig:
    where = f"system {system_id}"
    known = {
        "url",
        "schema",
        "tables",
        "subject",
        "suppression",
        "statement_timeout_ms",
        "connect_timeout_s",
        "pool_size",
    }
    _no_unknown(raw, known, where)
    url = raw.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{where}: settings.url must be a SQLAlchemy database URL")
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, Sequence) or isinstance(tables_raw, str) or not tables_raw:
        raise ConfigError(f"{where}: settings.tables must be a non-empty list")
    tables = tuple(_table(item, f"{where}: tables[{i}]") for i, item in enumerate(tables_raw))
    names = [t.table for t in tables]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a table is listed twice")
    for rule in tables:
        via = rule.match.via
        if via is not None and (via.table not in names or names.index(via.table) >= names.index(rule.table)):
            raise ConfigError(f"{where}: table {rule.table} matches via {via.table}, which must be listed before it")
    config = SqlConfig(
        url=url,
        tables=tables,
        schema=_ident(raw["schema"], f"{where}: schema") if raw.get("schema") else None,
        subject=_subject(raw["subject"], f"{where}: subject") if raw.get("subject") else None,
        suppression=_suppression(raw["suppression"], f"{where}: suppression") if raw.get("suppression") else None,
        statement_timeout_ms=_int(raw, "statement_timeout_ms", 30_000, where),
        connect_timeout_s=_int(raw, "connect_timeout_s", 10, where),
        pool_size=_int(raw, "pool_size", 4, where),
    )
    if any(t.suppress for t in tables) and config.suppression is None:
        raise ConfigError(f"{where}: a table has suppress but settings.suppression is missing")
    return config


def _table(raw: Any, where: str) -> TableRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(
        raw,
        {"table", "match", "erase", "columns", "retention", "expired_columns", "suppress", "export", "export_exclude"},
        where,
    )
    erase = raw.get("erase")
    if erase not in ("delete", "anonymise", "retain", "keep"):
        raise ConfigError(f"{where}: erase must be delete, anonymise, retain or keep")
    retention = _retention(raw["retention"], f"{where}.retention") if raw.get("retention") else None
    if (erase == "retain") != (retention is not None):
        raise ConfigError(f"{where}: erase: retain needs a retention block, and only it")
    rule = TableRule(
        table=_ident(raw.get("table"), f"{where}.table"),
        match=_match(raw.get("match"), f"{where}.match"),
        erase=erase,
        columns=_columns(raw.get("columns", {}), f"{where}.columns"),
        retention=retention,
        expired_columns=_columns(raw.get("expired_columns", {}), f"{where}.expired_columns"),
        suppress=_ident(raw["suppress"], f"{where}.suppress") if raw.get("suppress") else None,
        export=bool(raw.get("export", True)),
        export_exclude=tuple(_ident(c, f"{where}.export_exclude") for c in raw.get("export_exclude", ())),
    )
    if rule.erase == "anonymise":
        _unlinks(rule.match, rule.columns, f"{where}.columns")
    if rule.retention is not None and rule.retention.expired == "anonymise":
        _unlinks(rule.match, rule.expired_columns, f"{where}.expired_columns")
    return rule


def _unlinks(match: Match, actions: Mapping[str, ColumnAction], where: str) -> None:
    """An anonymised row must lose every column that tied it to the subject."""
    for column in (match.customer_id, match.email, match.phone):
        if column is not None and actions.get(column, ColumnAction("keep")).kind == "keep":
            raise ConfigError(f"{where}: anonymised rows must not keep the match column {column}")


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where} must name at least one of customer_id, email, phone, via")
    _no_unknown(raw, {"customer_id", "email", "phone", "via"}, where)
    via = raw.get("via")
    if via is not None:
        if not isinstance(via, Mapping):
            raise ConfigError(f"{where}.via must be a mapping")
        via = Via(*(_ident(via.get(k), f"{where}.via.{k}") for k in ("table", "column", "parent_column")))
    return Match(
        customer_id=_ident(raw["customer_id"], f"{where}.customer_id") if raw.get("customer_id") else None,
        email=_ident(raw["email"], f"{where}.email") if raw.get("email") else None,
        phone=_ident(raw["phone"], f"{where}.phone") if raw.get("phone") else None,
        via=via,
    )


def _columns(raw: Any, where: str) -> dict[str, ColumnAction]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of column to action")
    actions = {}
    for column, action in raw.items():
        _ident(column, where)
        if action is None or action == "null":
            actions[column] = ColumnAction("null")
        elif action in ("pseudonymise", "pseudonymize"):
            actions[column] = ColumnAction("pseudonymise")
        elif action == "keep":
            actions[column] = ColumnAction("keep")
        elif isinstance(action, Mapping) and set(action) == {"set"}:
            actions[column] = ColumnAction("set", action["set"])
        else:
            raise ConfigError(f"{where}.{column}: action must be null, pseudonymise, keep or {{set: VALUE}}")
    return actions


def _retention(raw: Any, where: str) -> Retention:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(raw, {"category", "legal_basis", "date_column", "years", "days", "expired"}, where)
    for name, limit in (("category", CATEGORY_MAX), ("legal_basis", LEGAL_BASIS_MAX)):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise ConfigError(f"{where}.{name} must be a non-empty string")
        if len(raw[name]) > limit:  # the receipt's bound (receipt.v1), which the store would cut it to
            raise ConfigError(f"{where}.{name} must be at most {limit} characters")
    years, days = _int(raw, "years", 0, where), _int(raw, "days", 0, where)
    if years <= 0 and days <= 0:
        raise ConfigError(f"{where}: give years or days")
    expired = raw.get("expired", "delete")
    if expired not in ("delete", "anonymise"):
        raise ConfigError(f"{where}.expired must be delete or anonymise")
    return Retention(
        raw["category"],
        raw["legal_basis"],
        _ident(raw.get("date_column"), f"{where}.date_column"),
        years,
        days,
        expired,
    )


def _subject(raw: Any, where: str) -> SubjectRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(raw, {"table", "key", "email", "email_fallback"}, where)
    rule = SubjectRule(
        table=_ident(raw.get("table"), f"{where}.table"),
        key=_ident(raw.get("key"), f"{where}.key"),
        email=_ident(raw["email"], f"{where}.email") if raw.get("email") else None,
        email_fallback=bool(raw.get("email_fallback", False)),
    )
    if rule.email_fallback and rule.email is None:
        raise ConfigError(f"{where}: email_fallback needs the email column")
    return rule


def _suppression(raw: Any, where: str) -> Suppression:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    _no_unknown(raw, {"table", "column", "key", "reason"}, where)
    key = raw.get("key")
    if not isinstance(key, str) or len(key) < 16:
        raise ConfigError(f"{where}.key must be a secret of at least 16 characters")
    return Suppression(
        _ident(raw.get("table"), f"{where}.table"),
        _ident(raw.get("column"), f"{where}.column"),
        key.encode("utf-8"),
        str(raw.get("reason", "erasure")),
    )


def _ident(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError(f"{where} must be an SQL identifier")
    return value


def _int(raw: Mapping[str, Any], name: str, default: int, where: str) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: {name} must be a non-negative integer")
    return value


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown settings {', '.join(map(str, unknown))}")
