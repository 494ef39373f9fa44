"""Named crash points for the kill tests (nothing acknowledged is ever lost). Inert unless the config
names them.

A crash here is a real ``SIGKILL`` of the whole process, the same as the OOM killer or a node loss:
no ``finally`` blocks, no flushes."""

from __future__ import annotations

import os
import signal

AFTER_RECORD = "after_record"  # command stored, offset not yet committed
AFTER_CLAIM = "after_claim"  # task marked running, connector not yet called
AFTER_CONNECTOR = "after_connector"  # the system acted, the result is not yet stored
AFTER_PUBLISH = "after_publish"  # receipts sent to Kafka, outbox rows not yet deleted

ALL = frozenset({AFTER_RECORD, AFTER_CLAIM, AFTER_CONNECTOR, AFTER_PUBLISH})


class Failpoints:
    def __init__(self, armed: frozenset[str]) -> None:
        unknown = armed - ALL
        if unknown:
            raise ValueError(f"unknown failpoints: {sorted(unknown)}")
        self.armed = armed

    def hit(self, name: str) -> None:
        if name in self.armed:
            os.kill(os.getpid(), signal.SIGKILL)
