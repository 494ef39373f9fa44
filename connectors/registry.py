"""Builds connectors from config: ``connector: NAME`` loads ``connectors/NAME.py`` and calls its ``create``.

A dotted name (``connector: mycompany.oubli_crm``) loads that module instead, so a connector can
live outside this repository.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from worker.core.connector import Connector, ConnectorContext
from worker.core.errors import ConfigError


def build(system_id: str, connector_name: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    if not all(part.isidentifier() for part in connector_name.split(".")):
        raise ConfigError(f"system {system_id}: connector name {connector_name!r} is not a module name")
    module_name = connector_name if "." in connector_name else f"connectors.{connector_name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(missing + "."):
            # The module exists but one of its own imports does not: naming the connector as missing would send
            # the operator looking for a typo in the config instead of at the image.
            raise ConfigError(f"system {system_id}: the {connector_name} connector cannot be loaded: it needs "
                              f"the module {missing!r}, which is not installed") from exc
        raise ConfigError(f"system {system_id}: no connector module named {connector_name!r}") from exc
    create = getattr(module, "create", None)
    if create is None:
        raise ConfigError(f"system {system_id}: connectors.{connector_name} has no create()")
    try:
        connector: Connector = create(system_id, settings, context)
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
        # A setting of the wrong shape that the connector's own checks let through (``float("inf")`` into an int,
        # a string where a mapping goes): the worker refuses to start, with a message and exit code 5, instead of
        # a traceback. The type only: a settings value may be a secret.
        raise ConfigError(f"system {system_id}: its settings are invalid ({type(exc).__name__} while building the "
                          f"{connector_name} connector)") from exc
    return connector
