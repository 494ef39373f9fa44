"""From Meta's app-scoped user id to the customer, through the identity system (``identity_system``).

The identity system's ``customer_identifiers`` table maps vendor ids to customers (kind
``facebook_user_id``); the account's email and phone go into the command so that every system can act.
Blocks on two short queries; any database error is ``IdentityUnavailable`` (no detail: it may quote data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlalchemy as sa

from connectors.orders_db import config as orders_config
from connectors.sql import make_engine
from worker.config import Settings
from worker.core.errors import ConfigError

KIND = "facebook_user_id"
MAX_ACCOUNTS = 100  # linked accounts counted per Facebook id; past it the count says "at least"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")


class IdentityUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Customer:
    customer_id: str = field(repr=False)
    emails: tuple[str, ...] = field(default=(), repr=False)
    phones: tuple[str, ...] = field(default=(), repr=False)
    # Other accounts linked to the same Facebook id: one command names one customer, so a person erases them.
    other_accounts: int = 0


class FacebookIdentity:
    def __init__(self, engine: sa.Engine, schema: str | None = None) -> None:
        self._engine = engine
        self._ids = sa.table("customer_identifiers", sa.column("customer_id"), sa.column("kind"),
                             sa.column("value"), schema=schema)
        self._customers = sa.table("customers", sa.column("customer_id"), sa.column("email"), sa.column("phone"),
                                   schema=schema)

    @classmethod
    def from_settings(cls, settings: Settings) -> FacebookIdentity:
        name = settings.identity_system
        system = settings.systems.get(name) if name else None
        if system is None or system.connector != "orders_db":
            raise ConfigError("oubli web needs identity_system to name a configured orders_db system")
        resolved = orders_config(name or "orders_db", system.settings)
        return cls(make_engine(resolved), resolved.schema)

    def customer(self, user_id: str) -> Customer | None:
        ids, customers = self._ids, self._customers
        try:
            with self._engine.connect() as conn:
                linked = conn.execute(sa.select(ids.c.customer_id).distinct()
                                      .where(ids.c.kind == KIND, ids.c.value == user_id)
                                      .order_by(ids.c.customer_id).limit(MAX_ACCOUNTS)).scalars().all()
                if not linked:
                    return None
                customer_id = linked[0]
                account = conn.execute(sa.select(customers.c.email, customers.c.phone)
                                       .where(customers.c.customer_id == customer_id)).first()
        except sa.exc.SQLAlchemyError:
            raise IdentityUnavailable("the identity system did not answer") from None
        email, phone = (account[0], account[1]) if account is not None else (None, None)
        return Customer(customer_id=str(customer_id), emails=_usable(email, _EMAIL, 254),
                        phones=_usable(phone, _E164, 16), other_accounts=len(linked) - 1)

    def close(self) -> None:
        self._engine.dispose()


def _usable(value: object, pattern: re.Pattern[str], max_length: int) -> tuple[str, ...]:
    """Shops keep what their forms sent, padding included: trim it as the connectors and the retention
    sweep do, or a padded address is dropped and every email-keyed system answers not_found."""
    if not isinstance(value, str):
        return ()
    trimmed = value.strip()
    return (trimmed,) if len(trimmed) <= max_length and pattern.match(trimmed) else ()
