"""Receipts: the request's current status as the receipts topic carries it. No personal data.

Built from store rows only, so what the topic says is exactly what the store says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from worker.core.timefmt import iso

# Internal steps run as tasks like any other (retries, leases, audit) but are not systems, so
# receipts leave them out. Their names cannot clash with a system id, which starts with a letter.
# After every system: an export's streams the staged files into one ZIP; an erasure's deletes the
# subject's earlier export packages (worker.export.forget), when exports are configured.
PACKAGE_TASK = "_package"
IDENTITY_TASK = "_identity"  # before any system: copies the subject's vendor ids from the identity store
VERIFY_TASK = "_verify"  # after every system of an erasure: checks that it is gone (worker.verification)
# Steps that become due only once every other task of their request (every real sibling) confirmed.
FINAL_TASKS: frozenset[str] = frozenset({PACKAGE_TASK, VERIFY_TASK})


def is_internal(system: str) -> bool:
    return system.startswith("_")


# What an internal step is called when its failure is the request's error.
_STEP_NAMES = {IDENTITY_TASK: "reading the subject's vendor ids", PACKAGE_TASK: "the export package",
               VERIFY_TASK: "the erasure's verification"}
# receipt.v1's bounds on an error message and a system's detail (the tasks table's columns hold as much).
MESSAGE_MAX = 1000
DETAIL_MAX = 500
CATEGORY_MAX = 64  # a retained entry's category
LEGAL_BASIS_MAX = 200  # and its legal_basis


def render(request: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``updated_at`` is the store's, so a re-sent receipt of an unchanged request is byte-identical."""
    tasks = list(tasks)
    error = None
    if request["error_code"]:
        error = {"code": request["error_code"], "message": request["error_message"] or ""}
    elif request["status"] == "action_required":
        error = _step_error(tasks)
    return {
        "schema_version": 1,
        "request_id": request["request_id"],
        "kind": request["kind"],
        "subject_ref": request["subject_ref"],
        "status": request["status"],
        "requested_at": iso(request["requested_at"]),
        "due_at": iso(request["due_at"]),
        "updated_at": iso(request["updated_at"]),
        "completed_at": iso(request["completed_at"]),
        "systems": [_system(t) for t in sorted(tasks, key=lambda t: t["system"]) if not is_internal(t["system"])],
        "export": json.loads(request["export_json"]) if request["export_json"] else None,
        "error": error,
    }


def _step_error(tasks: list[Mapping[str, Any]]) -> dict[str, str] | None:
    """The error of a failed internal step. Steps have no entry among the receipt's systems, so without this an
    ``action_required`` receipt whose cause is a step would show every system confirmed or pending, and no
    reason: the reader (support, the requesting service) could not tell what needs a person."""
    for task in sorted(tasks, key=lambda t: t["system"]):
        if is_internal(task["system"]) and task["state"] == "failed" and task["error_code"]:
            name = _STEP_NAMES.get(task["system"], task["system"])
            message = f"{name} failed: {task['error_message'] or task['error_code']}"
            return {"code": task["error_code"], "message": message[:MESSAGE_MAX]}
    return None


def _system(task: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "system": task["system"],
        "state": task["state"],
        "outcome": task["outcome"],
        "attempts": task["attempts"],
        "confirmed_at": iso(task["confirmed_at"]),
    }
    optional = {
        "next_attempt_at": iso(task["next_attempt_at"]) if task["state"] in ("retrying", "waiting_vendor") else None,
        "vendor_ref": task["vendor_ref"],
        "expected_by": iso(task["expected_by"]),
        "detail": task["detail"],
        "confirmed_by": task["confirmed_by"],
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    if task["error_code"] and task["state"] != "confirmed":
        entry["error"] = {"code": task["error_code"], "message": task["error_message"] or ""}
    if task["retained_json"]:
        entry["retained"] = json.loads(task["retained_json"])
    return entry


def encode(receipt: Mapping[str, Any]) -> bytes:
    return json.dumps(receipt, sort_keys=True, separators=(",", ":")).encode("utf-8")
