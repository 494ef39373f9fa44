"""``orders_db``: customer accounts, orders, deliveries, returns and the billing trail.

A rule set for the declarative SQL connector over ``devkit.shop_schemas.orders``: the account and its
identifiers are deleted, orders anonymised, invoices within ``billing_retention_years`` kept reduced
and reported as retained. ``create_identity_lookup(settings)`` reads the vendor ids of
``customer_identifiers``. Settings: docs/architecture.md (module notes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from connectors.sql import SqlConnector, make_engine
from connectors.sql_config import SqlConfig, preset
from connectors.sql_errors import db_error
from worker.core.connector import ConnectorContext, Subject
from worker.core.errors import ConfigError


def rules(billing_retention_years: int = 3, match_by_email: bool = False) -> dict[str, Any]:
    """The rule set, in the same shape as ``connector: sql`` settings (without the url)."""
    by_customer = {"customer_id": "customer_id"}
    via_orders = {"via": {"table": "orders", "column": "order_id", "parent_column": "order_id"}}
    invoice_identity = [
        "billing_name",
        "billing_company",
        "billing_line1",
        "billing_postal_code",
        "billing_city",
        "vat_number",
        "email",
        "phone",
        "customer_id",
    ]
    return {
        "subject": {"table": "customers", "key": "customer_id", "email": "email", "email_fallback": match_by_email},
        "tables": [
            {"table": "customers", "match": by_customer, "erase": "delete", "export_exclude": ["password_hash"]},
            {"table": "addresses", "match": by_customer, "erase": "delete"},
            {"table": "consents", "match": by_customer, "erase": "delete"},
            {"table": "customer_identifiers", "match": by_customer, "erase": "delete"},
            {
                "table": "orders",
                "match": by_customer,
                "erase": "anonymise",
                "columns": dict.fromkeys(
                    [
                        "customer_id",
                        "email",
                        "phone",
                        "shipping_name",
                        "shipping_line1",
                        "shipping_postal_code",
                        "shipping_city",
                        "customer_note",
                    ]
                ),
            },
            {"table": "order_lines", "match": via_orders, "erase": "anonymise", "columns": {"embroidery_text": None}},
            {
                "table": "deliveries",
                "match": via_orders,
                "erase": "anonymise",
                "columns": {
                    **dict.fromkeys(["recipient_name", "address_line", "postal_code", "city", "phone", "instructions"]),
                    "tracking_number": "pseudonymise",
                },
            },
            {
                "table": "returns",
                "match": via_orders,
                "erase": "anonymise",
                "columns": dict.fromkeys(["comment", "pickup_address"]),
            },
            {
                "table": "invoices",
                "match": by_customer,
                "erase": "retain",
                # What an invoice must show stays (Code de commerce L441-9, CGI art. 242 nonies A):
                # number, dates, buyer name and address, VAT number, amounts. Contact details go.
                "columns": dict.fromkeys(["email", "phone"]),
                "retention": {
                    "category": "invoices",
                    "legal_basis": "billing retention",
                    "date_column": "due_on",
                    "years": billing_retention_years,
                    "expired": "anonymise",
                },
                "expired_columns": dict.fromkeys(invoice_identity),
            },
        ],
    }


def config(system_id: str, settings: Mapping[str, Any]) -> SqlConfig:
    years = settings.get("billing_retention_years", 3)
    if isinstance(years, bool) or not isinstance(years, int) or not 1 <= years <= 10:
        raise ConfigError(f"system {system_id}: billing_retention_years must be an integer from 1 to 10")
    rule_set = rules(years, bool(settings.get("match_by_email", False)))
    return preset(system_id, settings, rule_set, frozenset({"billing_retention_years", "match_by_email"}))


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return SqlConnector(system_id, config(system_id, settings), context)


class OrdersIdentityLookup:
    """``worker.core.connector.IdentityLookup`` over ``customer_identifiers``. Blocks on one query."""

    def __init__(self, engine: sa.Engine, schema: str | None = None) -> None:
        self._engine = engine
        self._table = sa.table(
            "customer_identifiers",
            sa.column("customer_id"),
            sa.column("kind"),
            sa.column("value"),
            sa.column("recorded_at"),
            schema=schema,
        )

    def identifiers(self, subject: Subject, kind: str) -> tuple[str, ...]:
        t = self._table
        query = (
            sa.select(t.c.value)
            .where(t.c.customer_id == subject.customer_id, t.c.kind == kind)
            .order_by(t.c.recorded_at, t.c.value)
        )
        try:
            with self._engine.connect() as conn:
                return tuple(dict.fromkeys(str(v) for v in conn.execute(query).scalars()))
        except Exception as exc:
            raise db_error("orders_db", "identity lookup", exc) from None

    def close(self) -> None:
        self._engine.dispose()


def create_identity_lookup(settings: Mapping[str, Any]) -> OrdersIdentityLookup:
    resolved = config("orders_db", settings)
    return OrdersIdentityLookup(make_engine(resolved), resolved.schema)
