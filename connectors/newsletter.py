"""``newsletter``: the opt-in base (email, professions, consent history).

Erasure deletes the subscription and its history and records only a keyed hash of the normalised
address in ``suppressions``, which ``NewsletterImporter`` refuses, so an import cannot bring an erased
subscriber back. Export returns all three. Settings: ``url``, ``suppression_key`` (secret, >= 16
characters, stable)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from connectors import sql_email
from connectors.sql import SqlConnector, make_engine, reflect, suppression_hash
from connectors.sql_config import SqlConfig, normalise_email, preset
from connectors.sql_errors import db_error
from worker.core.connector import ConnectorContext
from worker.core.errors import ConfigError

_VIA_SUBSCRIBERS = {"via": {"table": "subscribers", "column": "subscriber_id", "parent_column": "subscriber_id"}}
RULES: dict[str, Any] = {
    "tables": [
        {
            "table": "subscribers",
            "match": {"email": "email", "customer_id": "customer_id"},
            "erase": "delete",
            "suppress": "email",
        },
        {"table": "subscriber_professions", "match": _VIA_SUBSCRIBERS, "erase": "delete"},
        {"table": "consent_events", "match": _VIA_SUBSCRIBERS, "erase": "delete"},
    ],
}


def config(system_id: str, settings: Mapping[str, Any]) -> SqlConfig:
    key = settings.get("suppression_key")
    if not isinstance(key, str) or len(key) < 16:
        raise ConfigError(f"system {system_id}: settings.suppression_key must be a secret of at least 16 characters")
    rule_set = {**RULES, "suppression": {"table": "suppressions", "column": "email_hmac", "key": key}}
    return preset(system_id, settings, rule_set, frozenset({"suppression_key"}))


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return SqlConnector(system_id, config(system_id, settings), context)


@dataclass(frozen=True)
class ImportReport:
    imported: int = 0
    already_subscribed: int = 0
    refused_suppressed: int = 0
    invalid: int = 0


class NewsletterImporter:
    """Imports subscriber lists (trade shows, partner forms) without reviving erased addresses."""

    def __init__(self, engine: sa.Engine, suppression_key: bytes) -> None:
        self._engine = engine
        self._key = suppression_key
        tables = reflect(engine, ["subscribers", "subscriber_professions", "consent_events", "suppressions"])
        self._subscribers = tables["subscribers"]
        self._professions = tables["subscriber_professions"]
        self._events = tables["consent_events"]
        self._suppressions = tables["suppressions"]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> NewsletterImporter:
        resolved = config("newsletter", settings)
        assert resolved.suppression is not None
        return cls(make_engine(resolved), resolved.suppression.key)

    def is_suppressed(self, conn: sa.Connection, email: str) -> bool:
        hashed = suppression_hash(self._key, email)
        return (
            conn.execute(
                sa.select(self._suppressions.c.email_hmac).where(self._suppressions.c.email_hmac == hashed)
            ).first()
            is not None
        )

    def import_subscribers(self, entries: Iterable[Mapping[str, Any]], *, source: str, now: datetime) -> ImportReport:
        """Each entry: ``email``, optional ``professions`` (list), ``language``, ``customer_id``."""
        counts = {"imported": 0, "already_subscribed": 0, "refused_suppressed": 0, "invalid": 0}
        try:
            with self._engine.begin() as conn:
                for entry in entries:
                    counts[self._import_one(conn, entry, source, now)] += 1
        except Exception as exc:
            raise db_error("newsletter", "import", exc) from None
        return ImportReport(**counts)

    def _import_one(self, conn: sa.Connection, entry: Mapping[str, Any], source: str, now: datetime) -> str:
        email = str(entry.get("email") or "")
        if "@" not in normalise_email(email):
            return "invalid"
        if self.is_suppressed(conn, email):
            return "refused_suppressed"
        s = self._subscribers
        if conn.execute(sa.select(s.c.subscriber_id).where(sql_email.condition(s.c.email, [email]))).first():
            return "already_subscribed"
        subscriber_id = conn.execute(
            sa.insert(s)
            .values(
                email=email.strip(),
                customer_id=entry.get("customer_id"),
                status="pending",
                language=str(entry.get("language", "fr")),
                source=source,
                subscribed_at=now,
            )
            .returning(s.c.subscriber_id)
        ).scalar_one()
        for profession in dict.fromkeys(entry.get("professions", ())):
            conn.execute(sa.insert(self._professions).values(subscriber_id=subscriber_id, profession=profession))
        conn.execute(
            sa.insert(self._events).values(subscriber_id=subscriber_id, occurred_at=now, action="opt_in", source=source)
        )
        return "imported"

    def close(self) -> None:
        self._engine.dispose()
