"""``oubli dlq``: count the dead-letter topic per error code (``summary``) and put commands back once the
cause is fixed (``replay``).

Each error code has its own cursor, which moves only after everything replayed was acknowledged; a
record naming a rejected request goes back under a new request_id (``worker.deadletter.reissue``).
Output is counts and request ids only, never keys, values or error messages. Rules in full:
docs/architecture.md."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from worker import kafka
from worker.config import KafkaSettings, Settings
from worker.core.timefmt import iso
from worker.deadletter.reissue import NAMED_ONLY, Outgoing, Reissuer, StoreIndex, unchanged
from worker.deadletter.topic import CODE, Cursors, DeadLetter, DlqError, DlqReader, summarize
from worker.operators import name_option
from worker.support import FAILED, CliError, Seconds, terminal_text

# -- replay ----------------------------------------------------------------------------------------------------------

BATCH = 500  # dead letters planned per store read


@dataclass
class ReplayReport:
    dry_run: bool
    replayed: Counter[str] = field(default_factory=Counter)  # sent (dry run: would be sent) by this run
    earlier: Counter[str] = field(default_factory=Counter)  # selected, but behind the cursor: replayed before
    skipped: Counter[str] = field(default_factory=Counter)  # other codes: not sent, cursors unmoved
    failed: Counter[str] = field(default_factory=Counter)  # not acknowledged by the broker
    kept: Counter[str] = field(default_factory=Counter)  # of replayed: a known request_id sent unchanged
    # Selected, but the broker refused the command itself, so the DLQ holds only a reference to it.
    references: Counter[str] = field(default_factory=Counter)
    advanced: list[str] = field(default_factory=list)  # codes whose cursor moved
    reissued: dict[tuple[str, str], None] = field(default_factory=dict)  # (old id, new id), acknowledged, in order

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "replayed": dict(self.replayed), "earlier": dict(self.earlier),
                "skipped": dict(self.skipped), "failed": dict(self.failed), "kept": dict(self.kept),
                "references": dict(self.references), "cursors_moved": self.advanced,
                "new_requests": self.new_requests()}

    def note(self, code: str, out: Outgoing) -> None:
        """What an acknowledged record (dry run: a planned one) was."""
        if out.kept:
            self.kept[code] += 1
        if out.replay_of is not None and out.request_id is not None:
            self.reissued[(out.replay_of, out.request_id)] = None

    def new_requests(self) -> list[dict[str, str]]:
        return [{"replay_of": old, "request_id": new} for old, new in self.reissued]


def replay(settings: KafkaSettings, *, codes: frozenset[str] | None, by: str | None, dry_run: bool,
           timeout: float, reissuer: Reissuer | None = None) -> ReplayReport:
    """Republishes dead letters to the commands topic, by the rule in the module docstring.

    Without a ``reissuer`` every record is sent byte-identical. ``codes=None`` selects every code but
    ``NAMED_ONLY`` (conflicting_duplicate).
    """
    if not dry_run and not by:
        raise ValueError("a replay that publishes needs the operator's name")
    report = ReplayReport(dry_run)
    deadline = time.monotonic() + timeout
    reader = DlqReader(settings, timeout=timeout)
    producer = None if dry_run else Producer(kafka.producer_config(settings))
    plan = reissuer.plan if reissuer is not None else unchanged
    waiting: Counter[str] = Counter()

    def delivered(code: str, out: Outgoing) -> Any:
        def callback(error: KafkaError | None, _message: Message) -> None:
            waiting[code] -= 1
            report.failed[code] += error is not None
            if error is None:
                report.note(code, out)
        return callback

    def send(batch: list[DeadLetter]) -> None:
        for letter, out in zip(batch, plan(batch, settings.topics.dlq, by or ""), strict=True):
            report.replayed[letter.code] += 1
            if producer is None:
                report.note(letter.code, out)
                continue
            waiting[letter.code] += 1
            if not _produce(producer, settings.topics.commands, letter.key, out, delivered(letter.code, out)):
                waiting[letter.code] -= 1
                report.failed[letter.code] += 1
        batch.clear()

    try:
        marks = reader.watermarks()
        cursors = Cursors(settings, marks, timeout=timeout)
        ends = {p: high for p, (_, high) in marks.items()}
        seen: set[str] = set()
        batch: list[DeadLetter] = []
        for letter in reader.read({p: low for p, (low, _) in marks.items()}, ends, deadline):
            if not _selected(letter.code, codes):
                report.skipped[letter.code] += 1
                continue
            seen.add(letter.code)
            if letter.offset < cursors.of(letter.code)[letter.partition]:
                report.earlier[letter.code] += 1
                continue
            if letter.is_reference():
                # Replaying the reference would only dead-letter it again: the command is in the
                # commands topic at its x-oubli-source offset, for a person to look at.
                report.references[letter.code] += 1
                continue
            batch.append(letter)
            if len(batch) >= BATCH:
                send(batch)
        send(batch)
    finally:
        reader.close()
        if producer is not None:
            producer.flush(max(deadline - time.monotonic(), 5.0))
    report.failed.update({code: n for code, n in waiting.items() if n > 0})  # no delivery report in time
    report.failed = +report.failed
    report.replayed = +(report.replayed - report.failed)  # replayed: acknowledged by the broker
    if producer is None or report.failed:
        return report  # a dry run moves nothing; after a failure the next run sends the same records again
    for code in sorted(seen):
        cursors.advance(code, ends)
        report.advanced.append(code)
    return report


def _selected(code: str, codes: frozenset[str] | None) -> bool:
    return code in codes if codes is not None else code not in NAMED_ONLY


def _produce(producer: Producer, topic: str, key: bytes | None, out: Outgoing, on_delivery: Any) -> bool:
    """Hands one record to the producer; False if librdkafka refused it at once (e.g. over message.max.bytes)."""
    try:
        kafka.produce(producer, topic, key=key, value=out.value, headers=out.headers, on_delivery=on_delivery,
                      timeout=60.0)
    except KafkaException:
        return False
    return True


# -- the click group ------------------------------------------------------------------------------------------------
# worker.cli registers this group with ``cli.add_command(dlq)``; importing worker.cli here would be circular.

def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else terminal_text(human))


def _reason(exc: DlqError) -> str:
    # A KafkaException is left to worker.cli: the broker is unreachable or refused, exit 4 (as oubli receipt).
    return exc.message


def _codes(values: Iterable[str]) -> frozenset[str] | None:
    codes = frozenset(values)
    bad = sorted(c for c in codes if not CODE.match(c))
    if bad:
        raise click.BadParameter(f"not an error code: {bad[0]!r}", param_hint="--code")
    return codes or None


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic (rejected commands). Never prints keys, values or messages."""


@dlq.command()
@click.option("--timeout", default=60.0, show_default=True, type=Seconds(), help="Seconds to read the whole topic.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def summary(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Per error code: records, not yet replayed, first and last (time, and the command's source offset).

    Reads every partition from its start to the end seen when the command starts, then stops.
    """
    settings = _settings(ctx).kafka
    try:
        partitions, codes = summarize(settings, timeout=timeout)
    except DlqError as exc:
        raise CliError(_reason(exc), FAILED) from None
    total = sum(c.count for c in codes)
    lines = [f"{settings.topics.dlq}: {total} records in {partitions} partitions",
             f"{'code':<28} {'count':>6} {'unreplayed':>10}  {'first':<24} {'source':<28} {'last':<24} source"]
    lines += [f"{c.code:<28} {c.count:>6} {c.unreplayed:>10}  {iso(c.first[0]) or '-':<24} {c.first[1] or '-':<28} "
              f"{iso(c.last[0]) or '-':<24} {c.last[1] or '-'}" for c in codes]
    _emit({"topic": settings.topics.dlq, "partitions": partitions, "records": total,
           "codes": [c.as_dict() for c in codes]}, as_json, "\n".join(lines))


@dlq.command("replay")
@click.option("--code", "codes", multiple=True, metavar="CODE", help="Only this error code (repeatable). "
              "Default: every code but conflicting_duplicate.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed, and list the new request ids it "
              "would use; publish nothing, move no cursor.")
@click.option("--by", "actor", metavar="NAME", callback=name_option,
              help="Your name or handle (not an email or a phone number), sent as x-oubli-replayed-by and kept in "
              "the new requests' audit trail. Required unless --dry-run.")
@click.option("--timeout", default=60.0, show_default=True, type=Seconds(),
              help="Seconds to read the DLQ and get acknowledgements.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replay_command(ctx: click.Context, codes: tuple[str, ...], dry_run: bool, actor: str | None, timeout: float,
                   as_json: bool) -> None:
    """Republish dead-lettered commands to the commands topic, once the cause is fixed.

    Each error code has its own cursor (consumer group <group_id>-dlq-replay.<code>). A run sends the
    selected codes' records past their cursors, up to the end seen at its start, and moves those
    cursors only once the broker acknowledged every record. Records of other codes are left for a
    later run, so a second identical run sends nothing. Exits 1 if a record was not acknowledged: no
    cursor moved, and the next run sends the same records again (harmless: request_id is the
    idempotency key). A command that fails again is dead-lettered again, for a later run.

    New request ids. The replay reads the store (store_url, read-only). A command whose request_id
    the store rejected cannot reopen it (a rejected receipt is terminal): it is carried out as a new
    request, the same body but for request_id (the same new id on every run), re-signed, with header
    x-oubli-replay-of; the new request's audit trail names the old id, the DLQ record and you. This
    applies to unknown_system, bad_signature, export_not_configured and no_systems, and to any other
    code you name with --code. The output lists each old id and its new one: tell the requester to
    follow the new one. With a signing secret configured, only a command whose signature verifies
    under it is re-signed. A command the store already recorded with the same body, or that is not
    reissued, goes back unchanged ("kept"). An id the store does not know goes back unchanged.

    conflicting_duplicate: a different body under an id already in use. It is replayed only when you
    name it with --code conflicting_duplicate, and then carried out under a new id even if the old id
    was carried out: right when a producer reused an id, a second erasure or export when it resent an
    edited command. Check which before you name it. Without --code it is left for such a run.

    Prefer --code: a record whose fault is in the command itself (invalid_json, schema_violation,
    too_large, ...) only comes back to the DLQ.
    """
    selected = _codes(codes)
    if not dry_run and not actor:
        raise click.UsageError("--by NAME is required (unless --dry-run)")
    settings = _settings(ctx)
    store = StoreIndex(settings.store_url)
    reissuer = Reissuer(store.lookup, subject_key=settings.subject_key.get_secret_value().encode(),
                        signing_secret=(settings.signing_secret.get_secret_value().encode()
                                        if settings.signing_secret else None),
                        named=selected or frozenset())
    try:
        report = replay(settings.kafka, codes=selected, by=actor, dry_run=dry_run, timeout=timeout,
                        reissuer=reissuer)
    except DlqError as exc:
        raise CliError(f"{_reason(exc)}; a code whose cursor did not move is sent again by the next run (harmless: "
                       "request_id is the idempotency key)", FAILED) from None
    finally:
        store.close()
    _emit(report.as_dict(), as_json, _format_replay(report, settings.kafka))
    if report.failed:
        click.echo("error: some records were not acknowledged; no cursor moved, run the replay again", err=True)
        ctx.exit(1)


def _format_replay(report: ReplayReport, settings: KafkaSettings) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    lines = [f"{settings.topics.dlq} -> {settings.topics.commands}"
             + (" (dry run: nothing published, no cursor moved)" if report.dry_run else ""),
             f"{'code':<28} {verb:>12} {'earlier':>8} {'failed':>7} {'kept':>5}"]
    for code in sorted({*report.replayed, *report.earlier, *report.failed}):
        lines.append(f"{code:<28} {report.replayed[code]:>12} {report.earlier[code]:>8} {report.failed[code]:>7} "
                     f"{report.kept[code]:>5}")
    lines.append(f"total {verb}: {sum(report.replayed.values())}")
    if report.kept:
        lines.append("kept: the store knows their request_id, sent unchanged (a copy of a recorded command is "
                     "deduplicated; the others come back to the DLQ)")
    if report.skipped:
        lines.append("left for another run (other codes): "
                     + ", ".join(f"{code} {n}" for code, n in sorted(report.skipped.items()))
                     + (f" ({', '.join(sorted(NAMED_ONLY & set(report.skipped)))} only with --code)"
                        if NAMED_ONLY & set(report.skipped) else ""))
    if report.references:
        lines.append("not replayable, the broker refused the command itself and the DLQ holds only a reference "
                     "(the original is in the commands topic at its x-oubli-source offset): "
                     + ", ".join(f"{code} {n}" for code, n in sorted(report.references.items())))
    if report.reissued:
        lines.append(("would send" if report.dry_run else "sent")
                     + " under a new request_id, the one to follow (replay of -> request_id):")
        lines += [f"  {old} -> {new}" for old, new in report.reissued]
    return "\n".join(lines)
