"""``oubli``: the worker, and the commands support and operators use. Human output, or ``--json``.

Conventions (docs/operations.md): ``--json`` on every command; exit codes 0 ok, 1 failed, 2 usage,
3 not found, 4 unavailable (broker or store), 5 configuration; a failure ends in one ``error: …``
line on stderr, never a traceback; logs are JSON lines on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click
import structlog

from worker import config as config_module
from worker import kafka, logs, shutdown
from worker.compliance import report
from worker.config import Settings
from worker.core.errors import ConfigError
from worker.core.timefmt import iso, utcnow
from worker.deadletter.replay import dlq
from worker.metrics import VERSION
from worker.operators import OPERATOR_ENV, default_operator, name_option, note_option
from worker.store import db
from worker.store.repository import Store
from worker.support import (
    CONFIG,
    COUNT,
    NOT_FOUND,
    USAGE,
    CliError,
    Seconds,
    cli_error,
    error_text,
    printable,
    terminal_text,
)
from worker.verification.cli import status_lines, verification_events, verify

if TYPE_CHECKING:
    from worker.retention import SweepReport


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _store(settings: Settings, actor: str) -> Store:
    from worker.states import RetryPolicy

    engine = db.create_engine(settings.store_url)
    return Store(engine, topics=settings.kafka.topics, policy=RetryPolicy(), actor=actor)


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else terminal_text(human))


class _Commands(click.Group):
    """Turns a command's Kafka, store, not-found and config failures into their exit code and one line;
    refuses undecodable arguments and keeps the operator's control characters off the terminal."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # Bytes that are not UTF-8 reach Python as lone surrogates ("\udcff"), which no driver, encoder or
        # terminal takes. Every command's arguments are here, before any is parsed.
        if any(_undecodable(arg) for arg in args):
            raise CliError("an argument is not valid UTF-8 (check the terminal's or the script's encoding)", USAGE)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            raise _printable(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise _printable(exc) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            error = cli_error(exc)
            if error is None:
                raise  # a bug: logged as one JSON line (logs.install_excepthooks), exit 1
            raise error from None


def _undecodable(arg: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in arg)


def _printable(exc: click.ClickException) -> click.ClickException:
    """click quotes the offending value in its usage errors (an unknown command, a bad --limit)."""
    exc.message = error_text(exc.message)  # type: ignore[misc]  # click declares it Final; we only clean it
    return exc


@click.group(cls=_Commands)
@click.option("--config", "config_path", envvar="OUBLI_CONFIG", type=click.Path(dir_okay=False),
              help="YAML config file (default: $OUBLI_CONFIG).")
@click.version_option(VERSION, "--version", prog_name="oubli", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """oubli carries out GDPR erasure and export requests."""
    if ctx.invoked_subcommand != "worker":
        shutdown.release_held()  # only the worker turns a signal into a drain; held during the imports
    logs.configure(logs.env_level())  # the config's log_level takes over once it is read
    ctx.obj = _LazySettings(config_path)


class _LazySettings(dict[str, Any]):
    """``ctx.obj["settings"]``, loaded when a command first asks: ``oubli status --help`` needs no config."""

    def __init__(self, config_path: str | None) -> None:
        super().__init__()
        self.config_path = config_path

    def __missing__(self, key: str) -> Any:
        if key != "settings":
            raise KeyError(key)
        try:
            settings = config_module.load(self.config_path)
        except ConfigError as exc:
            raise CliError(exc.message, CONFIG) from None
        logs.configure(settings.log_level)
        self[key] = settings
        return settings


@cli.command()
@click.option("--migrate/--no-migrate", default=False, help="Upgrade the store's schema before starting.")
@click.pass_context
def worker(ctx: click.Context, migrate: bool) -> None:
    """Run the worker until SIGTERM."""
    with shutdown.listening(shutdown.StopRequest()) as stop:
        settings = _settings(ctx)
        if not settings.systems:
            # Every command would be rejected as no_systems: a terminal receipt for each customer's request, and a
            # config that lost its systems (a values file that did not render) would look like a healthy worker.
            raise CliError("the config names no systems: the worker would reject every command as no_systems; "
                           "configure at least one under systems:", CONFIG)
        from worker.app import Worker

        try:
            started = Worker(settings, migrate=migrate, stop=stop)
        except shutdown.StoppedBeforeStart:
            structlog.get_logger("oubli.worker").info("worker_stopped", before_start=True)
            return
        started.run()


@cli.command()
@click.option("--host", help="Listen on this address (default: web.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen on this port (default: web.port).")
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve Meta's data deletion callback, the status pages and the support lookup until SIGTERM."""
    from worker.web.server import serve

    serve(_settings(ctx), host=host, port=port)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Upgrade the store's schema to this version (the Helm migration Job runs this)."""
    engine = db.create_engine(_settings(ctx).store_url)
    behind = db.pending_migrations(engine)
    db.migrate(engine)
    _emit({"migrated": behind, "up_to_date": True}, as_json, "store schema is up to date")


@cli.command()
@click.option("--partitions", default=kafka.COMMAND_PARTITIONS, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--replication", default=1, show_default=True, type=click.IntRange(1, 32_767))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def topics(ctx: click.Context, partitions: int, replication: int, as_json: bool) -> None:
    """Create the commands, receipts (compacted) and DLQ topics if they are missing."""
    created = kafka.ensure_topics(_settings(ctx).kafka, partitions=partitions, replication=replication)
    _emit({"created": list(created)}, as_json, f"created: {', '.join(created)}" if created else "all topics exist")


@cli.command()
@click.option("--kind", type=click.Choice(["erasure", "export"]), required=True)
@click.option("--customer-id", required=True)
@click.option("--email", "emails", multiple=True)
@click.option("--phone", "phones", multiple=True, help="E.164, e.g. +33612345678")
@click.option("--id", "identifiers", multiple=True, metavar="KIND=VALUE", help="e.g. ga_client_id=123.456")
@click.option("--system", "systems", multiple=True, help="Restrict to these systems (default: all).")
@click.option("--request-id")
@click.option("--reason")
@click.option("--requested-by", default="oubli-cli", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, kind: str, customer_id: str, emails: tuple[str, ...], phones: tuple[str, ...],
           identifiers: tuple[str, ...], systems: tuple[str, ...], request_id: str | None, reason: str | None,
           requested_by: str, as_json: bool) -> None:
    """Publish a command to the commands topic."""
    from worker import messages, support

    ids: dict[str, list[str]] = {}
    for item in identifiers:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter("use KIND=VALUE", param_hint="--id")
        ids.setdefault(name, []).append(value)
    command = support.build_command(
        kind=kind, customer_id=customer_id, emails=emails, phones=phones, identifiers=ids,
        systems=systems or None, requested_by=requested_by, reason=reason, request_id=request_id,
    )
    problems = messages.schema_errors("command.v1", command)
    if messages.names_a_person(command["request_id"], command):  # the worker refuses it: say so here, as it does
        problems.append(messages.PERSONAL_REQUEST_ID)
    settings = _settings(ctx)
    unknown = [f"systems[{i}]" for i, system in enumerate(systems) if system not in settings.systems]
    if unknown:  # the worker would reject it as unknown_system: say so here, by position as the worker does
        problems.append(f"{', '.join(unknown)}: not a system configured here ({len(unknown)} of {len(systems)})")
    if problems:
        raise CliError("the command would be rejected: " + "; ".join(problems), USAGE)
    secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
    support.publish_command(settings.kafka, command, signing_secret=secret)
    _emit({"request_id": command["request_id"]}, as_json, f"submitted {kind} {command['request_id']}")


@cli.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=10.0, show_default=True, type=Seconds())
@click.pass_context
def receipt(ctx: click.Context, request_id: str, as_json: bool, timeout: float) -> None:
    """Show the latest receipt of a request, from the compacted receipts topic."""
    from worker import support

    found = support.read_receipt(_settings(ctx).kafka, request_id, timeout=timeout)
    if found is None:
        raise CliError(f"no receipt for {request_id}", NOT_FOUND)
    _emit(found, as_json, format_receipt(found))


@cli.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--audit/--no-audit", default=False, help="Also list the audit trail.")
@click.pass_context
def status(ctx: click.Context, request_id: str, as_json: bool, audit: bool) -> None:
    """Show a request's per-system state from the store."""
    store = _store(_settings(ctx), "oubli-cli")
    request, tasks, events = store.get(request_id)  # NotFound: exit 3
    current = store.receipt(request_id)
    if as_json:
        _emit({**current, "audit": events if audit else None, "verification": verification_events(events)}, True, "")
        return
    lines = [format_receipt(current)]
    # A rejected request a DLQ replay carried out under a new id (support holds only the old one).
    lines += [f"replayed  {e['detail']}" for e in events if e["action"] == "replayed_as"]
    lines += status_lines(events)  # verified systems with their counts, residue, tombstones, resurrection links
    if audit:
        lines.append("audit:")
        lines += [f"  {iso(e['at'])}  {e['actor']:<24} {e['action']:<16} {e['system'] or '-':<18} "
                  f"{e['from_state'] or ''}->{e['to_state'] or ''} {e['error_code'] or ''}" for e in events]
    click.echo(terminal_text("\n".join(lines)))


@cli.command()
@click.argument("request_id")
@click.option("--system", help="Only this system (default: every failed system).")
@click.option("--by", "actor", required=True, callback=name_option, default=default_operator,
              show_default=f"${OPERATOR_ENV}, else your login name",
              help="Your name or handle, for the audit trail (not an email or a phone number).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retry(ctx: click.Context, request_id: str, system: str | None, actor: str, as_json: bool) -> None:
    """Retry a request's failed systems now, with a fresh attempt budget."""
    store = _store(_settings(ctx), actor)
    systems = store.operator_retry(request_id, system, actor=actor, now=utcnow())  # NotFound 3, conflict 1
    _emit({"request_id": request_id, "retrying": list(systems)}, as_json,
          f"retrying: {', '.join(systems)}" if systems else "nothing to retry")


@cli.command()
@click.argument("request_id")
@click.option("--system", required=True)
@click.option("--by", "actor", required=True, callback=name_option,
              help="Your name or handle, recorded in the audit trail and sent in the receipt as confirmed_by "
              "(not an email or a phone number).")
@click.option("--note", required=True, callback=note_option, metavar="TEXT",
              help="Why this system is confirmed by hand, at most 1000 characters; emails and phone numbers in it "
              "are redacted before it is stored.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def confirm(ctx: click.Context, request_id: str, system: str, actor: str, note: tuple[str, bool],
            as_json: bool) -> None:
    """Confirm a system by hand, for example after the vendor confirmed by email."""
    text, redacted = note
    store = _store(_settings(ctx), actor)
    store.operator_confirm(request_id, system, actor=actor, note=text, now=utcnow())  # NotFound 3, conflict 1
    _emit({"request_id": request_id, "system": system, "confirmed_by": actor, "note": text,
           "note_redacted": redacted}, as_json,
          f"{system} manually confirmed by {actor}"
          + (f"\nnote stored with personal data redacted: {printable(text)}" if redacted else ""))


@cli.command("requests")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["accepted", "in_progress", "action_required", "completed"]),
              help="Only these statuses (default: every open one).")
@click.option("--overdue", is_flag=True, help="Only requests past their due date.")
@click.option("--system", help="Only requests this system has not confirmed yet.")
@click.option("--customer-id", help="Only this customer's requests, finished ones too, newest first. "
              "It is matched by its keyed hash (subject_ref) and never printed.")
@click.option("--at-risk", "at_risk", is_flag=True,
              help="Project when each open request is served at the rate- or quota-limited systems; "
              "show those that will miss their due date first, and why.")
@click.option("--limit", default=50, show_default=True, type=COUNT)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_requests(ctx: click.Context, statuses: tuple[str, ...], overdue: bool, system: str | None,
                  customer_id: str | None, at_risk: bool, limit: int, as_json: bool) -> None:
    """List open requests, earliest due first, with the systems holding each one up."""
    from worker import messages
    from worker.store.reports import open_requests

    if at_risk:
        return _at_risk(_settings(ctx), system, limit, as_json)
    settings = _settings(ctx)
    now = utcnow()
    subject_ref = (messages.subject_ref(settings.subject_key.get_secret_value().encode(), customer_id)
                   if customer_id is not None else None)
    total, found = open_requests(db.create_engine(settings.store_url), now, statuses=statuses,
                                 overdue_only=overdue, system=system, subject_ref=subject_ref, limit=limit)
    if as_json:
        _emit({"total": total, "requests": [
            {"request_id": r.request_id, "kind": r.kind, "status": r.status, "subject_ref": r.subject_ref,
             "requested_at": iso(r.requested_at), "due_at": iso(r.due_at), "overdue": r.overdue(now),
             "waits_for": r.waits_for,
             "waiting_on": [{"system": b.system, "state": b.state, "attempts": b.attempts,
                             "error_code": b.error_code, "next_attempt_at": iso(b.next_attempt_at)}
                            for b in r.blockers]}
            for r in found]}, True, "")
        return
    lines = [f"{r.request_id}  {r.kind or '-':<8} {r.status:<16} due {iso(r.due_at) or '-'}"
             f"{'  OVERDUE' if r.overdue(now) else ''}\n    waiting on: "
             + (", ".join(f"{b.system} ({b.state}{', ' + b.error_code if b.error_code else ''})" for b in r.blockers)
                or "-")
             + (f"\n    behind:     {r.waits_for} (an earlier open request of the same subject)" if r.waits_for else "")
             for r in found]
    lines.append(f"{len(found)} of {total} {'requests' if customer_id else 'open requests'} shown")
    click.echo(terminal_text("\n".join(lines)))


def _at_risk(settings: Settings, system: str | None, limit: int, as_json: bool) -> None:
    """``oubli requests --at-risk``: the projection of ``worker.foresight`` over the store's backlog."""
    from worker import planning

    engine = db.create_engine(settings.store_url)
    now = utcnow()
    capacities = planning.capacities(settings, engine, utcnow)
    if system is not None:
        capacities = {s: c for s, c in capacities.items() if s == system}
    forecasts = planning.forecast(engine, capacities, now, planning.keeps(settings))
    late = [f for f in forecasts if f.late]
    if as_json:
        _emit({"as_of": iso(now), "limited_systems": sorted(capacities), "open": len(forecasts), "at_risk": len(late),
               "requests": [{"request_id": f.request_id, "priority": f.priority, "due_at": iso(f.due_at),
                             "served_by": iso(f.served_by), "late": f.late, "systems": list(f.systems),
                             "reason": f.reason} for f in forecasts[:limit]]}, True, "")
        return
    lines = [f"{f.request_id}  {f.priority:<10} due {iso(f.due_at)}  served by about {iso(f.served_by)}"
             f"{'  AT RISK' if f.late else ''}\n    {f.reason}" for f in forecasts[:limit]]
    where = ", ".join(sorted(capacities)) or "no limited system"
    lines.append(f"{len(late)} of {len(forecasts)} open requests at {where} will miss their due date at today's "
                 "quotas (requests still to come are not counted)")
    click.echo(terminal_text("\n".join(lines)))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be emitted, per rule; publish nothing.")
@click.option("--as-of", "as_of", metavar="DATE|DATETIME",
              help="Sweep as of this moment (ISO 8601; UTC unless an offset is given). Default: now.")
@click.option("--limit", type=COUNT, help="At most N commands per rule in this run.")
@click.option("--max-per-run", "max_per_run", type=COUNT,
              help="At most N commands in this run, all rules together: spreads a first sweep over days "
              "(size it to what the limited systems' reserved quota serves between two runs).")
@click.option("--timeout", default=120.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the broker's acknowledgements.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sweep(ctx: click.Context, dry_run: bool, as_of: str | None, limit: int | None, max_per_run: int | None,
          timeout: float, as_json: bool) -> None:
    """Emit erasure commands for data past its retention period (config: retention.rules).

    Prints counts per rule, never who. Exits 1 if a rule failed, a command was not acknowledged, or a
    subject could not be named in a valid command (``invalid``: the data needs a person).
    """
    from worker import retention
    from worker.core.timefmt import parse

    settings = _settings(ctx)
    if not settings.retention.rules:
        raise CliError("no retention rules are configured (retention.rules)", CONFIG)
    try:
        moment = parse(as_of) if as_of else utcnow()
    except ValueError:
        raise click.BadParameter("use an ISO 8601 date or date-time", param_hint="--as-of") from None
    if moment > utcnow() + timedelta(minutes=5) and not dry_run:  # would erase data that has not expired yet
        raise click.BadParameter("a future date is allowed only with --dry-run", param_hint="--as-of")
    from worker import planning

    # What each limited system can take a day; pricing never stops a sweep (a connector this job cannot build).
    capacities = planning.capacities(settings, None, utcnow, strict=False)
    report = retention.sweep(settings, as_of=moment, dry_run=dry_run, limit=limit, timeout=timeout,
                             max_per_run=max_per_run, capacities=capacities)
    _emit(report.as_dict(), as_json, format_sweep(report))
    if not report.ok:
        invalid = sum(rule.invalid for rule in report.rules)
        reasons = [f"{invalid} expired subject(s) no valid command can name (docs/runbook.md)"] if invalid else []
        if any(rule.error or rule.failed for rule in report.rules):
            reasons.append("a rule failed or a command was not acknowledged; the next sweep emits it again")
        click.echo("error: " + "; ".join(reasons), err=True)
        ctx.exit(1)


def format_sweep(report: SweepReport) -> str:
    verb = "would emit" if report.dry_run else "emitted"
    lines = [f"retention sweep as of {iso(report.as_of)}" + (" (dry run: nothing published)" if report.dry_run else ""),
             f"{'rule':<28} {'expired':>8} {'kept':>8} {'invalid':>8} {verb:>10} {'failed':>8}"]
    for rule in report.rules:
        notes = []
        if rule.limited:
            notes.append("limit reached: the rest waits for the next run")
        if rule.dropped_identifiers:
            notes.append(f"{rule.dropped_identifiers} unusable emails/phones left out")
        if rule.invalid:
            notes.append(f"{rule.invalid} subject(s) no valid command can name: a person must erase them")
        if rule.error:
            notes.append(f"error: {rule.error}")
        lines.append(f"{rule.rule:<28} {rule.expired:>8} {rule.kept:>8} {rule.invalid:>8} {rule.emitted:>10} "
                     f"{rule.failed:>8}" + (f"  {'; '.join(notes)}" if notes else ""))
    if report.costs:  # what the emission costs the rate- and quota-limited systems
        lines.append(f"cost at the limited systems ({'would be ' if report.dry_run else ''}background work, "
                     "after standard requests):")
        lines.extend(f"  {cost.describe()}" for cost in report.costs)
    return "\n".join(lines)


def format_receipt(receipt: Mapping[str, Any]) -> str:
    lines = [
        f"request   {receipt['request_id']}  ({receipt['kind'] or 'unknown kind'})",
        f"status    {receipt['status']}",
        f"subject   {receipt['subject_ref'] or '-'}",
        f"requested {receipt['requested_at'] or '-'}   due {receipt['due_at'] or '-'}",
        f"updated   {receipt['updated_at']}   completed {receipt['completed_at'] or '-'}",
    ]
    if receipt.get("error"):
        lines.append(f"error     {receipt['error']['code']}: {receipt['error']['message']}")
    for system in receipt.get("systems", []):
        extra = []
        if system.get("outcome"):
            extra.append(system["outcome"])
        for item in system.get("retained", []):
            extra.append(f"retains {item['category']} until {item['until']} ({item['legal_basis']})")
        if system.get("next_attempt_at"):
            extra.append(f"next attempt {system['next_attempt_at']}")
        if system.get("error"):
            extra.append(f"{system['error']['code']}: {system['error']['message']}")
        lines.append(f"  {system['system']:<18} {system['state']:<15} attempts={system['attempts']}  "
                     + "; ".join(extra))
    if receipt.get("export"):
        export = receipt["export"]
        lines.append(f"export    {export['size_bytes']} bytes sha256={export['sha256']} expires {export['expires_at']}")
        lines.append(f"          {export['url']}")
    return "\n".join(lines)


cli.add_command(dlq)
cli.add_command(report)
cli.add_command(verify)


def main() -> None:
    logs.install_excepthooks()
    cli(standalone_mode=True)
