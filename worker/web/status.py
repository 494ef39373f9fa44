"""What a status page shows, built from the confirmation row and the request's receipt: no personal data.

The receipt is what the receipts topic carries (closed schema, subject named by an HMAC only), so the
page cannot show more than that: per system its state, outcome and retained categories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.config import Settings
from worker.core.timefmt import add_months, aware, parse
from worker.web import categories
from worker.web.confirmations import Confirmation
from worker.web.i18n import day, text

_PHASE_OF_STATUS = {"accepted": "received", "in_progress": "in_progress", "action_required": "in_progress",
                    "completed": "completed", "rejected": "rejected"}
_STEPS = ("received", "in_progress", "completed")


@dataclass(frozen=True)
class Line:
    label: str
    result: str
    done: bool


@dataclass(frozen=True)
class StatusView:
    phase: str  # received, in_progress, completed, rejected, no_data
    message: str
    dates: list[tuple[str, str]]
    steps: list[tuple[str, str, str]]  # label, css state (done/current/todo), accessible state
    ours: list[Line] = field(default_factory=list)
    vendors: list[Line] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    kept_final: bool = True


def _outcome(system: Mapping[str, Any], lang: str) -> tuple[str, bool]:
    if system["state"] == "confirmed" and system.get("outcome"):
        key = f"outcome_{system['outcome']}"
        return (text(key, lang), True) if key in _KNOWN else (system["outcome"], True)
    if system["state"] == "waiting_vendor":
        return text("outcome_waiting_vendor", lang), False
    if system["state"] == "pending":
        return text("outcome_waiting", lang), False
    return text("outcome_pending", lang), False


_KNOWN = {f"outcome_{o}" for o in ("erased", "anonymized", "not_found", "retained", "requested",
                                    "manually_confirmed")}


def _date(value: str | None) -> datetime | None:
    return parse(value) if value else None


def build(settings: Settings, confirmation: Confirmation, receipt: Mapping[str, Any] | None, lang: str) -> StatusView:
    overrides = settings.web.categories
    if confirmation.request_id is None:
        return StatusView(phase="no_data", message=text("status_no_data", lang),
                          dates=[(text("checked_on", lang), day(confirmation.created_at, lang))],
                          steps=_steps("completed", lang))
    # Recorded, never published, and the person holds its code: only a callback whose customer no valid
    # command can carry gets there (``deletion``), and the team handles it by hand, as for action_required.
    by_hand = receipt is None and confirmation.published_at is None
    status = receipt["status"] if receipt else "action_required" if by_hand else "accepted"
    phase = _PHASE_OF_STATUS.get(status, "in_progress")
    received = _date(receipt["requested_at"]) if receipt else aware(confirmation.created_at)
    due = _date(receipt["due_at"]) if receipt else add_months(aware(confirmation.created_at), 1)
    dates = [(text("received_on", lang), day(received, lang))]
    if phase == "completed":
        dates.append((text("completed_on", lang), day(_date(receipt["completed_at"]) if receipt else None, lang)))
    dates.append((text("deadline", lang), day(due, lang)))
    message = text("status_action_required" if status == "action_required" else f"status_{phase}", lang)
    view = StatusView(phase=phase, message=message, dates=dates, steps=_steps(phase, lang),
                      kept_final=phase == "completed")
    for system in (receipt or {}).get("systems", []):
        label = getattr(categories.category(system["system"], overrides), lang)
        result, done = _outcome(system, lang)
        vendor = categories.category(system["system"], overrides).vendor
        (view.vendors if vendor else view.ours).append(Line(label, result, done))
        for item in system.get("retained", []):
            view.kept.append(text(
                "kept_item", lang,
                category=categories.named(categories.RETAINED_CATEGORIES, item["category"], lang),
                until=day(_date(item["until"]), lang),
                basis=categories.named(categories.LEGAL_BASES, item["legal_basis"], lang)))
    return view


def _steps(phase: str, lang: str) -> list[tuple[str, str, str]]:
    reached = _STEPS.index(phase) if phase in _STEPS else 1
    steps = []
    for index, step in enumerate(_STEPS):
        state = "done" if index < reached or (index == reached == 2) else "current" if index == reached else "todo"
        steps.append((text(f"step_{step}", lang), state, text(f"step_{state}", lang)))
    return steps
