"""A deliberately incomplete connector, for the verification tests: loyalty's rules, but its erasure
forgets the promo codes (a connector bug that says ``erased`` all the same)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from connectors import loyalty
from connectors.sql import SqlConnector
from connectors.sql_config import preset
from worker.core.connector import CallResult, ConnectorContext, Subject


class ForgetfulLoyalty(SqlConnector):
    def erase(self, subject: Subject) -> CallResult:
        full = self.config
        self.config = dataclasses.replace(full, tables=tuple(t for t in full.tables if t.table != "promo_codes"))
        try:
            return super().erase(subject)
        finally:
            self.config = full  # verify() checks against every declared table
            self._tables = None  # reflected again, all of them


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> SqlConnector:
    return ForgetfulLoyalty(system_id, preset(system_id, settings, loyalty.RULES), context)
