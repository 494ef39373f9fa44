"""The retention sweeper: ``oubli sweep`` turns expired data into ordinary erasure commands.

Rules are config (``retention.rules``, ``worker.config.RetentionRule``): a source system's table, the
subject column, timestamp column(s), a period, target systems and ``unless`` checks. The sweeper only
emits deterministic commands (``worker.retention.commands``), so overlapping sweeps deduplicate;
the worker erases. ``expires_when`` (``all_rows`` or ``any_row``) and billing: docs/architecture.md."""

from worker.retention.sweep import RuleReport, SweepReport, sweep

__all__ = ["RuleReport", "SweepReport", "sweep"]
