"""A connector that confirms at once: ``connector: bench.noop`` (the dotted-module extension point).

It does no I/O, so a benchmark over it measures the worker alone: intake, claims, results, receipts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.connector import ConnectorContext, ExportWriter, Result, Subject


class NoopConnector:
    def __init__(self, system: str) -> None:
        self.system = system

    def erase(self, subject: Subject) -> Result:
        return Result(outcome="erased")

    def export(self, subject: Subject, writer: ExportWriter) -> Result:
        return Result(outcome="exported")

    def poll(self, subject: Subject, vendor_ref: str) -> Result:
        return Result(outcome="erased")

    def close(self) -> None:
        pass


def create(system: str, settings: Mapping[str, Any], context: ConnectorContext) -> NoopConnector:
    return NoopConnector(system)
