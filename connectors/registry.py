"""Builds connectors from config: ``connector: NAME`` loads ``connectors/NAME.py`` and calls its ``create``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from connectors.base import Connector, ConnectorContext
from worker.errors import ConfigError


def build(system_id: str, connector_name: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    if not connector_name.isidentifier():
        raise ConfigError(f"system {system_id}: connector name {connector_name!r} is not a module name")
    try:
        module = importlib.import_module(f"connectors.{connector_name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"system {system_id}: no connector module named {connector_name!r}") from exc
    create = getattr(module, "create", None)
    if create is None:
        raise ConfigError(f"system {system_id}: connectors.{connector_name} has no create()")
    connector: Connector = create(system_id, settings, context)
    return connector
