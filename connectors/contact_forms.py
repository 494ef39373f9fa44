"""``contact_forms``: contact-form messages (email and message, kept 1 year) and the replies to them.

Messages are matched by email as typed in the form, with whitespace and ASCII case normalised on both
sides, and nothing else (``connectors.sql_email``).
Erasure deletes the messages and their replies; export returns both. Settings: ``url`` and the
optional connection settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.sql import SqlConnector
from connectors.sql_config import preset
from worker.core.connector import ConnectorContext

RULES: dict[str, Any] = {
    "tables": [
        {"table": "contact_messages", "match": {"email": "email"}, "erase": "delete"},
        {
            "table": "contact_replies",
            "erase": "delete",
            "match": {"via": {"table": "contact_messages", "column": "message_id", "parent_column": "message_id"}},
        },
    ],
}


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return SqlConnector(system_id, preset(system_id, settings, RULES), context)
