"""Every log event name used in worker/ and connectors/ is declared in worker/logevents.py, and every
declared name is used: the table is the one place to read what the logs can say."""

from __future__ import annotations

import ast
from pathlib import Path

from worker.logevents import EVENTS

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}


def _log_events() -> dict[str, str]:
    """``log.<level>("event", ...)`` calls: event name -> first place it is used."""
    used: dict[str, str] = {}
    for path in sorted([*(ROOT / "worker").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in {"log", "logger"}
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                used.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return used


def test_every_log_event_is_declared_once_with_a_meaning() -> None:
    used = _log_events()
    undeclared = {name: where for name, where in used.items() if name not in EVENTS}
    assert not undeclared, f"declare these events in worker/logevents.py EVENTS with a one-line meaning: {undeclared}"
    unused = sorted(set(EVENTS) - set(used))
    assert not unused, f"worker/logevents.py declares events nothing logs: {unused}"
    assert all(name.isidentifier() and name.islower() and meaning.strip() for name, meaning in EVENTS.items())


def test_the_scan_sees_multi_line_calls() -> None:
    assert "outbox_record_dropped" in _log_events()  # a call whose arguments span several lines
