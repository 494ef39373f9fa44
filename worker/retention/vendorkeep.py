"""Systems that no longer hold the data: a background erasure is confirmed there without a call.

A system may declare how long it keeps data itself (``keeps_data_days``: Google Analytics keeps
event data 2 or 14 months). A ``background`` erasure whose subject's ``last_activity_at`` is older
than that is confirmed ``not_found``, with a detail that says why, and spends no vendor quota. A
``standard`` request always calls: the customer asked, and only the vendor can say what it holds.
The executor consults this before dispatching a task (``Executor(skip=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from worker.core.connector import Result
from worker.core.limits import BACKGROUND
from worker.store.records import ClaimedTask


class VendorRetention:
    def __init__(self, keeps_data_days: Mapping[str, int | None]) -> None:
        self.keeps = {system: days for system, days in keeps_data_days.items() if days is not None}

    def __call__(self, task: ClaimedTask, now: datetime) -> Result | None:
        days = self.keeps.get(task.system)
        subject = task.subject
        if (days is None or task.kind != "erasure" or subject.priority != BACKGROUND
                or subject.last_activity_at is None or now - subject.last_activity_at <= timedelta(days=days)):
            return None
        return Result("not_found", detail=f"{task.system} keeps data {days} days and the subject's last "
                                          "activity is older: nothing left to erase, no call made")
