"""``oubli verify``: the resurrection scan, and how ``oubli status`` shows a request's verification.

Prints counts by system and table, never who. Exit codes as every command's (docs/operations.md):
1 when a system could not be scanned, an erasure was not acknowledged or a subject found again could not be
named in a valid command, 5 without a tombstone key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import click

from worker.core.timefmt import iso
from worker.store.verification import RESURRECTED_AS, RESURRECTION_OF, VERIFICATION_FAILED
from worker.support import Seconds
from worker.verification.scan import ScanReport

_SHOWN = ("verified", VERIFICATION_FAILED, "tombstoned", RESURRECTION_OF, RESURRECTED_AS)


@click.command("verify")
@click.option("--dry-run", is_flag=True, help="Count what is back, per system and table; publish and change nothing.")
@click.option("--timeout", default=120.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the broker's acknowledgements.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, dry_run: bool, timeout: float, as_json: bool) -> None:
    """Scan the internal systems for erased subjects that came back; erase each again (resurrection-scan).

    Uses the tombstones of completed erasures (verification.tombstone_key). A subject whose earlier
    resurrection erasure is still open is not sent again, so running it twice sends nothing new.
    """
    from worker.verification import wiring

    report = wiring.scan(ctx.obj["settings"], dry_run=dry_run, timeout=timeout)
    click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True) if as_json else format_scan(report))
    if not report.ok:
        reasons = [f"{report.invalid} subject(s) found again no valid command can name (docs/runbook.md)"] \
            if report.invalid else []
        if report.errors or report.failed:
            reasons.append("a system could not be scanned or an erasure was not acknowledged; the next run "
                           "sends it again")
        click.echo("error: " + "; ".join(reasons), err=True)
        ctx.exit(1)


def format_scan(report: ScanReport) -> str:
    verb = "would send" if report.dry_run else "sent"
    dry = " (dry run: nothing published)" if report.dry_run else ""
    lines = [f"resurrection scan {iso(report.started_at)}{dry}",
             f"tombstones {report.tombstones}  purged {report.purged}  rows scanned {report.scanned}",
             f"{'system':<20} {'table':<28} {'rows found':>10}"]
    lines += [f"{system:<20} {table:<28} {rows:>10}" for (system, table), rows in sorted(report.found.items())]
    lines += [f"{system:<20} error: {error}" for system, error in sorted(report.errors.items())]
    lines.append(f"erased subjects found again: {report.subjects}; erasures {verb}: {report.emitted}; "
                 f"already being erased: {report.skipped}; failed: {report.failed}; "
                 f"no valid command: {report.invalid}; unusable values left out: {report.dropped_identifiers}")
    return "\n".join(lines)


def verification_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The audit events that tell a request's verification, tombstones and resurrection links (no values)."""
    return [{"at": iso(e["at"]), "action": e["action"], "system": e["system"], "detail": e["detail"]}
            for e in events if e["action"] in _SHOWN]


def status_lines(events: Iterable[Mapping[str, Any]]) -> list[str]:
    names = {"verified": "verified", VERIFICATION_FAILED: "residue", "tombstoned": "tombstone",
             RESURRECTION_OF: "resurrection of", RESURRECTED_AS: "resurrected as"}
    return [f"{names[e['action']]:<9} {(e['system'] + ': ') if e['system'] else ''}{e['detail'] or ''}"
            for e in verification_events(events)]
