"""``loyalty``: points balance, promo codes and loyalty history (schema: ``devkit.shop_schemas.loyalty``).

Erasure deletes the loyalty account, its history and the promo codes issued to the customer;
export returns all three. Settings: ``url`` and the optional connection settings of
``connectors.sql_config.CONNECTION_SETTINGS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.sql import SqlConnector
from connectors.sql_config import preset
from worker.core.connector import ConnectorContext

RULES: dict[str, Any] = {
    "tables": [
        {"table": "loyalty_accounts", "match": {"customer_id": "customer_id"}, "erase": "delete"},
        {"table": "loyalty_history", "match": {"customer_id": "customer_id"}, "erase": "delete"},
        {"table": "promo_codes", "match": {"customer_id": "customer_id"}, "erase": "delete"},
    ],
}


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return SqlConnector(system_id, preset(system_id, settings, RULES), context)
