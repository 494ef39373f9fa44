"""What an operator types into the audit trail: ``--by`` (who) and ``--note`` (why).

Both are kept indefinitely in ``audit_events``, shown by ``oubli status --audit`` and the support page,
and ``--by`` of ``oubli confirm`` becomes the receipt's ``confirmed_by`` on the receipts topic, which
must never carry personal data. So ``--by`` is a handle (``sre-jean``, ``dpo``), refused when it looks
like an email or a phone number; a note goes through the logs' redaction (``worker.logs.scrub``) before
it is stored. Both columns have a size; a value over it is refused, never cut.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from typing import TypeVar

import click

from worker import logs
from worker.support import USAGE, CliError

OPERATOR_ENV = "OUBLI_OPERATOR"  # who runs the CLI, where ``--by`` may be left out
NAME_MAX = 128  # audit_events.actor, tasks.confirmed_by, receipt.v1's confirmed_by
NOTE_MAX = 1000  # audit_events.detail
# local@domain without a dot in the domain is still an address ("jean@corp"); a leading @ is a chat handle.
T = TypeVar("T")


class Refused(ValueError):
    """Why a value cannot go into the audit trail; names no part of the value."""


def operator_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise Refused("must not be empty")
    if len(name) > NAME_MAX:
        raise Refused(f"at most {NAME_MAX} characters")
    if not name.isprintable():
        raise Refused("must not hold control characters")
    if logs.looks_personal(name):
        raise Refused("a name or handle, not an email address or a phone number (it goes to the receipts topic)")
    return name


def default_operator() -> str | None:
    """Who runs the CLI when ``--by`` is left out: ``$OUBLI_OPERATOR``, else the login name; checked like ``--by``.

    ``oubli retry`` at 3 a.m. should not fail for a missing flag: the audit trail still names somebody, the
    one logged in. ``oubli confirm`` has no default, because its ``--by`` is an attestation that goes to the
    receipt, nor ``oubli dlq replay``, which republishes commands for the whole fleet. ``None`` (a container's uid
    without a name): ``--by`` is then required."""
    name = os.environ.get(OPERATOR_ENV, "").strip()
    if name:
        return name
    try:
        return getpass.getuser() or None
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry for the uid
        return None


def operator_note(value: str) -> tuple[str, bool]:
    """The note as stored, and whether the redaction replaced something in it."""
    if len(value) > NOTE_MAX:
        raise Refused(f"at most {NOTE_MAX} characters")
    note = logs.scrub(value)
    if len(note) > NOTE_MAX:  # "[redacted]" is longer than some of what it replaces
        raise Refused(f"at most {NOTE_MAX} characters once personal data is redacted")
    return note, note != value


def _option(check: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback that runs ``check`` on the value: a usage error (exit 2) when it refuses it."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return check(value)
        except Refused as exc:
            raise CliError(f"{param.opts[0]}: {exc}", USAGE) from None

    return callback


name_option = _option(operator_name)  # every --by
note_option = _option(operator_note)  # --note: the note as stored, and whether something was redacted
