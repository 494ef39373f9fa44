"""The ``web_confirmations`` table: which code (hashed) maps to which request, per Facebook user (keyed hash).

Each call is one short transaction. Two simultaneous callbacks of one user race on the unique
``(user_ref, generation)``; the loser reads the winner's row, so both answer with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker.core.timefmt import aware
from worker.store.schema import requests, web_confirmations

TERMINAL = ("completed", "rejected")


@dataclass(frozen=True)
class Confirmation:
    code_hash: str
    sealed_code: str
    user_ref: str
    generation: int
    request_id: str | None
    created_at: datetime
    published_at: datetime | None

    def __repr__(self) -> str:  # the code hash is the page's key too
        return f"Confirmation(request_id={self.request_id!r}, generation={self.generation})"


def _confirmation(row: Any) -> Confirmation:
    values = {key: row[key] for key in Confirmation.__dataclass_fields__}
    # SQLite hands timestamps back naive; they were written in UTC.
    values["created_at"] = aware(values["created_at"])
    values["published_at"] = aware(values["published_at"]) if values["published_at"] else None
    return Confirmation(**values)


class Confirmations:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def latest(self, user_ref: str) -> tuple[Confirmation, str | None] | None:
        """The user's latest confirmation and its request's status (None: not recorded by the worker yet)."""
        query = (sa.select(web_confirmations, requests.c.status)
                 .select_from(web_confirmations.outerjoin(
                     requests, requests.c.request_id == web_confirmations.c.request_id))
                 .where(web_confirmations.c.user_ref == user_ref)
                 .order_by(web_confirmations.c.generation.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else (_confirmation(row), row["status"])

    def insert(self, confirmation: Confirmation) -> Confirmation:
        """Records it, or returns the row a concurrent call of the same user recorded first."""
        values = {key: getattr(confirmation, key) for key in Confirmation.__dataclass_fields__}
        try:
            with self.engine.begin() as conn:
                conn.execute(web_confirmations.insert().values(**values))
            return confirmation
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(web_confirmations).where(
                    web_confirmations.c.user_ref == confirmation.user_ref,
                    web_confirmations.c.generation == confirmation.generation)).mappings().first()
            if row is None:
                raise
            return _confirmation(row)

    def mark_published(self, code_hash: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(web_confirmations.update().where(web_confirmations.c.code_hash == code_hash)
                         .values(published_at=now))

    def by_code_hash(self, code_hash: str) -> Confirmation | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(web_confirmations)
                               .where(web_confirmations.c.code_hash == code_hash)).mappings().first()
        return None if row is None else _confirmation(row)
