"""Commands in: bytes to a validated, typed ``Command``, or an ``InvalidCommand`` with a stable code.

Validation order matters for what the sender is told: size, then JSON, then the signature, then the
request id (so that a rejection can be receipted), then schema version, text, schema, systems and dates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from itertools import combinations
from typing import Any, TypeVar

import fastjsonschema
import jsonschema
from rfc3339_validator import validate_rfc3339

import schemas
from worker import jsontext, logs
from worker.core import timefmt
from worker.core.connector import Subject
from worker.core.errors import InvalidCommand

MAX_COMMAND_BYTES = 64 * 1024
SIGNATURE_HEADER = "x-oubli-signature"
V = TypeVar("V")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_E164 = re.compile(r"\+[0-9]{7,15}")  # a phone number as a command's phones hold it
_NOT_DIGITS = re.compile(r"[^0-9]+")


@dataclass(frozen=True)
class Command:
    request_id: str
    kind: str
    customer_id: str
    emails: tuple[str, ...]
    phones: tuple[str, ...]
    identifiers: Mapping[str, tuple[str, ...]]
    requested_at: datetime
    requested_by: str
    due_at: datetime
    systems: tuple[str, ...] | None
    reason: str | None
    body: Mapping[str, Any] = field(repr=False)
    priority: str = "standard"  # or "background": the sweeper's and bulk work, served after standard
    last_activity_at: datetime | None = None  # the subject's, when the sender knows it (the sweeper)

    def __repr__(self) -> str:  # no personal data in tracebacks
        return f"Command(request_id={self.request_id!r}, kind={self.kind!r})"

    def subject(self, subject_ref: str) -> Subject:
        return Subject(
            request_id=self.request_id, subject_ref=subject_ref, customer_id=self.customer_id,
            emails=self.emails, phones=self.phones, identifiers=dict(self.identifiers),
            priority=self.priority, last_activity_at=self.last_activity_at,
        )


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = schemas.load(name)
    validator_class = jsonschema.validators.validator_for(schema)
    validator: jsonschema.protocols.Validator = validator_class(
        schema, format_checker=validator_class.FORMAT_CHECKER,
    )
    return validator


def _schema_objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of a schema document, at any depth."""
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from _schema_objects(child)
    elif isinstance(node, list):
        for child in node:
            yield from _schema_objects(child)


@cache
def _property_names(name: str) -> frozenset[str]:
    """Every property name the schema itself defines, at any depth."""
    return frozenset(key for node in _schema_objects(schemas.load(name)) for key in node.get("properties", {}))


def schema_errors(name: str, document: Any) -> list[str]:
    """Where ``document`` breaks the schema, as JSON paths and validator names: never the values.

    Nor the input's own keys: a key the schema does not define (an identifier kind, an unexpected
    field) is shown as ``[*]``, because a sender may have put an email there, and these messages
    reach the DLQ headers, the audit trail and a ``rejected`` receipt.
    """
    if _passes_compiled(name, document):
        return []
    known = _property_names(name)

    def path(error: jsonschema.ValidationError) -> str:
        parts = ["$"]
        for part in error.absolute_path:
            parts.append(f"[{part}]" if isinstance(part, int) else f".{part}" if part in known else "[*]")
        return "".join(parts)

    clipped, was_clipped = _clip_arrays(document, _array_cap(name), _object_cap(name))
    errors = sorted({f"{path(error)}: {error.validator} violated" for error in _validator(name).iter_errors(clipped)})
    if not errors and was_clipped:  # cannot happen while the caps hold (see _object_cap); never "valid"
        return ["$: an array or an object is larger than the schema allows"]
    return errors


@cache
def _array_cap(name: str) -> int:
    """One item more than the longest array the schema allows (every array in it has a ``maxItems``)."""
    limits = [node["maxItems"] for node in _schema_objects(schemas.load(name)) if isinstance(node.get("maxItems"), int)]
    return max(limits, default=0) + 1


@cache
def _object_cap(name: str) -> int | None:
    """One member more than any object of the schema may hold, or None when one may hold any number.

    Every object of command.v1 is closed (``additionalProperties: false``, so it holds at most its properties)
    or has a ``maxProperties``: an object with more members than that breaks the schema, and cut to one
    more it still does, in the same place."""
    limits = []
    for node in _schema_objects(schemas.load(name)):
        if node.get("type") != "object":
            continue
        if isinstance(node.get("maxProperties"), int):
            limits.append(node["maxProperties"])
        elif node.get("additionalProperties") is False:
            limits.append(len(node.get("properties", {})))
        else:
            return None
    return max(limits, default=0) + 1


def _clip_arrays(document: Any, cap: int, object_cap: int | None = None) -> tuple[Any, bool]:
    """``document`` with every array cut to ``cap`` items (and every object to its first ``object_cap``
    members), and whether any was cut.

    jsonschema checks every keyword of a rejected document, and its ``uniqueItems`` compares items pair by pair
    when they cannot be sorted (ints mixed with strings): a 64 KiB command with 11,000 such emails took
    minutes, and held the whole worker. An array cut to one item past its ``maxItems`` still breaks the schema
    in the same place, so the explanation keeps its paths, and its cost no longer grows with the square of
    the size. Objects likewise: 2,500 identifier kinds of two lists each made one command cost 0.2-0.4 s of
    errors, and a batch of 500 held the loop for minutes, past its liveness probe. ``decode`` bounds the depth.
    """
    cut = False

    def clip(node: Any) -> Any:
        nonlocal cut
        if isinstance(node, list):
            cut = cut or len(node) > cap
            return [clip(child) for child in node[:cap]]
        if isinstance(node, dict):
            items = list(node.items())
            if object_cap is not None and len(items) > object_cap:
                cut, items = True, items[:object_cap]
            return {key: clip(child) for key, child in items}
        return node

    return clip(document), cut


@cache
def _compiled(name: str) -> Callable[[Any], Any]:
    """The schema compiled to Python (fastjsonschema): a tenth of jsonschema's time on a valid command.

    The schema keeps the 2020-12 dialect but uses only keywords draft 7 has (``$defs`` is reached by
    JSON pointer), which is what fastjsonschema compiles. ``date-time`` is checked by the same RFC 3339
    function jsonschema uses, not fastjsonschema's looser pattern.
    """
    return fastjsonschema.compile(schemas.load(name), formats={"date-time": validate_rfc3339})


def _passes_compiled(name: str, document: Any) -> bool:
    """True only when the compiled validator accepts ``document``: a fast yes for the common case.

    Whatever it rejects or cannot handle is decided by jsonschema (``schema_errors``), which also names
    the violations. ``tests/unit/test_messages_validators.py`` checks it never accepts what jsonschema refuses.
    """
    try:
        _compiled(name)(document)
    except Exception:  # noqa: BLE001 - a refusal or a failure of the compiled code: jsonschema decides
        return False
    return True


@cache
def _part_validator(name: str, pointer: str) -> Callable[[Any], Any]:
    node: Any = schemas.load(name)
    for step in pointer.strip("/").split("/"):
        node = node[step]
    return fastjsonschema.compile(node)


def fits(name: str, pointer: str, value: Any) -> bool:
    """Whether ``value`` alone passes the part of the schema at ``pointer`` (a JSON pointer without
    ``$ref``, e.g. ``/$defs/id``), and ``text_problem`` finds nothing in it.

    For senders that build commands from stored data (the retention sweep, the resurrection scan,
    the web callback): they leave out a value the worker would refuse, rather than send a command
    that would be dead-lettered whole. Checked against the schema itself, so it cannot drift from it.
    """
    if text_problem(value) is not None:
        return False
    try:
        _part_validator(name, pointer)(value)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def header(headers: Iterable[tuple[str, V]], name: str) -> V | None:
    """The value of the header ``name`` (one of oubli's own, in lower case), its name's case ignored: Kafka header
    names are case-sensitive, and a producer that writes ``X-Oubli-Signature`` as HTTP would means the same header.
    The exact name wins over another case; among several of one name, the last, as ``dict(headers)`` has it."""
    exact = folded = None
    found_exact = found_folded = False
    for key, value in headers:
        if key == name:
            exact, found_exact = value, True
        elif key.isascii() and key.lower() == name:
            folded, found_folded = value, True
    return exact if found_exact else folded if found_folded else None


def keyed_digest(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def subject_ref(key: bytes, customer_id: str) -> str:
    return "hmac-sha256:" + keyed_digest(key, customer_id)


# The command.v1 fields a sender may leave out or send with the value that means unset (null, or the default), and
# the subject's that it may leave out or send empty: to the same effect either way.
UNSET_FIELDS: dict[str, Any] = {"due_at": None, "reason": None, "systems": None, "priority": "standard"}
UNSET_SUBJECT_FIELDS: dict[str, Any] = {"emails": [], "phones": [], "identifiers": {}}


def body_digest(key: bytes, body: Mapping[str, Any]) -> str:
    """Identifies a command's content for duplicate detection without keeping the content. A field sent with the
    value that means unset (``UNSET_FIELDS``: null, or the default; ``UNSET_SUBJECT_FIELDS``: empty) counts the same
    as one left out, so that a producer's retry through another JSON serializer is a duplicate, not a conflict:
    such a field is left out. A body without one keeps the digest it always had (``sent_digest``)."""
    return sent_digest(key, _without_unset(body))


def earlier_digests(key: bytes, body: Mapping[str, Any]) -> tuple[str, ...]:
    """The digests versions before ``body_digest`` stored for the same command: the body as it came, each of its
    unset fields left out or written out, in every combination but the one that is ``body_digest`` (127 at most).
    Asked only when a request id is already known under another digest, so a command's intake hashes it once."""
    kept = _without_unset(body)
    unset = [(False, name, value) for name, value in UNSET_FIELDS.items() if name not in kept]
    subject: Mapping[str, Any] = kept.get("subject") or {}  # a validated command always has one
    unset += [(True, name, value) for name, value in UNSET_SUBJECT_FIELDS.items() if name not in subject]
    digests = []
    for size in range(1, len(unset) + 1):
        for written in combinations(unset, size):
            form = {**kept, **{name: value for inside, name, value in written if not inside}}
            if any(inside for inside, _, _ in written):
                form["subject"] = {**subject, **{name: value for inside, name, value in written if inside}}
            digests.append(sent_digest(key, form))
    return tuple(digests)


def _without_unset(body: Mapping[str, Any]) -> dict[str, Any]:
    kept = _without(body, UNSET_FIELDS)
    if isinstance(kept.get("subject"), Mapping):
        kept["subject"] = _without(kept["subject"], UNSET_SUBJECT_FIELDS)
    return kept


def _without(document: Mapping[str, Any], unset: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if not (name in unset and value == unset[name])}


def body_digests(key: bytes, body: Mapping[str, Any]) -> tuple[str, ...]:
    """``body_digest`` first, then ``earlier_digests``: every digest a recorded copy of this command may carry."""
    return body_digest(key, body), *earlier_digests(key, body)


def sent_digest(key: bytes, body: Mapping[str, Any]) -> str:
    """The body's digest as it came, nulls and all: what versions before ``body_digest`` stored."""
    return keyed_digest(key, json.dumps(body, sort_keys=True, separators=(",", ":")))


def verify_signature(value: bytes, signature: bytes | str | None, secret: bytes) -> bool:
    """Compared as bytes: ``compare_digest`` raises ``TypeError`` on a non-ASCII str, and a header is
    whatever the sender put there. Hex in either case: Java's and .NET's usual encoders write upper case."""
    if signature is None:
        return False
    given = signature if isinstance(signature, bytes) else signature.encode("utf-8", "replace")
    expected = hmac.new(secret, value, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, given.strip().removeprefix(b"sha256=").lower())


def signed_by_any(value: bytes, signature: bytes | str | None, secrets: Sequence[bytes]) -> bool:
    return any(verify_signature(value, signature, secret) for secret in secrets)


def sign(value: bytes, secret: bytes) -> str:
    return hmac.new(secret, value, hashlib.sha256).hexdigest()


def could_be_request_id(text: str) -> bool:
    """Whether any stored request can have this id: what the schema's ``id`` or ``peek_request_id`` lets
    through. Anything else (a NUL, which PostgreSQL refuses; whitespace; a control character; a lone
    surrogate) is looked up nowhere."""
    return 0 < len(text) <= 128 and not any(
        c.isspace() or c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in text)


def peek_request_id(document: Any) -> str | None:
    """The request id if it is well-formed enough to name a receipt, and names no person, else None."""
    if not isinstance(document, dict):
        return None
    candidate = document.get("request_id")
    if isinstance(candidate, str) and 0 < len(candidate) <= 128 and candidate.isprintable() and " " not in candidate \
            and not names_a_person(candidate, document):
        return candidate
    return None


PERSONAL_REQUEST_ID = ("$.request_id: an email address, a phone number or one of the subject's identifiers; a "
                       "request id is kept on the receipts topic and in the audit trail for good")


def names_a_person(request_id: str, document: Mapping[str, Any]) -> bool:
    """Whether a request id is personal data: an email address, an E.164 phone number, or one of the
    subject's own values (its customer_id, an email, a phone, a vendor id) given as the id.

    A request id is the key of the compacted receipts topic and is kept in the request row and the audit
    trail for good, past the subject's purge; so such a command is refused, and its rejection is not
    receipted under that id. Only the shapes and the command's own values: an id that merely holds
    digits (a timestamp, an order number) stays valid."""
    folded = logs.fold(request_id)
    if logs.AT_ADDRESS.search(folded) or _E164.fullmatch(folded):
        return True
    values = _subject_values(document.get("subject"))
    if folded in values:
        return True
    # A phone number inside a longer id ("callback-+33612345678") is still the whole number: its digits are looked
    # for among the id's. A customer id inside one ("C-100234-erasure") is the sender's own key, and stays valid.
    digits = _NOT_DIGITS.sub("", folded)
    return any(value[1:] in digits for value in values if _E164.fullmatch(value))


def _subject_values(subject: Any) -> set[str]:
    """The subject's strings, as far as a document that may not have passed the schema holds them."""
    if not isinstance(subject, dict):
        return set()
    values: list[Any] = [subject.get("customer_id")]
    for name in ("emails", "phones"):
        if isinstance(subject.get(name), list):
            values += subject[name]
    identifiers = subject.get("identifiers")
    if isinstance(identifiers, dict):
        for ids in identifiers.values():
            if isinstance(ids, list):
                values += ids
    folded = {logs.fold(value) for value in values if isinstance(value, str)}
    return folded | {value.removeprefix("+") for value in folded if _E164.fullmatch(value)}  # a phone's digits too


def decode(value: bytes | None) -> Any:
    if value is None:
        raise InvalidCommand("invalid_json", "the message has no value")
    if len(value) > MAX_COMMAND_BYTES:
        raise InvalidCommand("too_large", f"the command is {len(value)} bytes; the limit is {MAX_COMMAND_BYTES}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCommand("invalid_json", f"the value is not UTF-8 (error at byte {exc.start})") from None
    try:
        return jsontext.loads(text)
    except jsontext.JsonRejected as exc:
        raise InvalidCommand("invalid_json", f"the value is {exc}") from None


def text_problem(document: Any, name: str = "command.v1") -> str | None:
    """Where a string (a key or a value) holds a NUL or a lone surrogate, as a JSON path, or None.

    Neither survives the way out: PostgreSQL refuses NUL in text, and a lone surrogate (``"\\udc80"``,
    valid JSON escape, invalid Unicode) cannot be encoded to UTF-8 for hashing, the store or Kafka.
    ``decode`` bounds the depth, so this walk cannot recurse too deep.
    """
    known = _property_names(name)

    def bad(text: str) -> bool:
        return "\x00" in text or _SURROGATE.search(text) is not None

    def walk(node: Any, path: str) -> str | None:
        if isinstance(node, str):
            return path if bad(node) else None
        children: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            if isinstance(key, str):
                step = f".{key}" if key in known else "[*]"
                if bad(key):
                    return path + step
            else:
                step = f"[{key}]"
            found = walk(child, path + step)
            if found is not None:
                return found
        return None

    return walk(document, "$")


def parse(
    document: Any,
    *,
    value: bytes,
    signature: bytes | str | None,
    signing_secret: bytes | None,
    known_systems: frozenset[str],
    due_days_default: int | None = None,
    previous_secrets: Sequence[bytes] = (),
) -> Command:
    """Validates a decoded command. Raises ``InvalidCommand`` carrying the readable request id.

    The signature comes first: a command nobody vouches for gets no request id in its rejection, so
    it can never create a ``rejected`` request that squats the id it names (only a DLQ record).
    """
    if signing_secret is not None and not signed_by_any(value, signature, (signing_secret, *previous_secrets)):
        raise InvalidCommand("bad_signature", f"the {SIGNATURE_HEADER} header is missing or does not match")
    request_id = peek_request_id(document)

    def reject(code: str, message: str) -> InvalidCommand:
        return InvalidCommand(code, message, request_id=request_id)

    if isinstance(document, dict) and _is_number(document.get("schema_version")) and document["schema_version"] != 1:
        raise reject("unsupported_schema_version", "schema_version must be 1")
    bad_text = text_problem(document)
    if bad_text is not None:
        raise reject("schema_violation", f"{bad_text}: a string holds a NUL character or a lone surrogate")
    problems = schema_errors("command.v1", document)
    if problems:
        raise reject("schema_violation", "the command does not match command.v1: " + "; ".join(problems[:5]))
    if names_a_person(document["request_id"], document):
        # ``reject`` names no request id here (peek_request_id refused it): no receipt is keyed by it.
        raise reject("schema_violation", PERSONAL_REQUEST_ID)
    systems = document.get("systems")
    if systems is not None:
        # Named by position, never by name: a name is the sender's text (``orders_db_marie_dupont``), and this
        # message reaches the receipt, the DLQ headers and the logs. The DLQ record keeps the command itself.
        unknown = [i for i, system in enumerate(systems) if system not in known_systems]
        if unknown:
            where = ", ".join(f"systems[{i}]" for i in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            raise reject("unknown_system", f"{where}: not a system configured here ({len(unknown)} of {len(systems)})")
    subject = document["subject"]
    try:
        requested_at, due_at = _dates(document, due_days_default)
        last_activity_at = timefmt.in_range(timefmt.parse(subject["last_activity_at"])) \
            if subject.get("last_activity_at") else None
    except timefmt.OutOfRange as exc:
        raise reject("out_of_range", f"requested_at, due_at or last_activity_at: {exc}") from None
    except ValueError:  # passed the format check, yet no datetime (a leap second, say)
        raise reject("schema_violation", "requested_at, due_at or last_activity_at is not a valid date-time") from None
    return Command(
        request_id=document["request_id"],
        kind=document["kind"],
        customer_id=subject["customer_id"],
        emails=tuple(subject.get("emails", ())),
        phones=tuple(subject.get("phones", ())),
        identifiers={k: tuple(v) for k, v in subject.get("identifiers", {}).items()},
        requested_at=requested_at,
        requested_by=_sender(document["requested_by"], document),
        due_at=due_at,
        systems=tuple(systems) if systems is not None else None,
        reason=document.get("reason"),
        body=document,
        priority=document.get("priority", "standard"),
        last_activity_at=last_activity_at,
    )


def _sender(requested_by: str, document: Mapping[str, Any]) -> str:
    """``requested_by`` as the store keeps it: the request row and the audit trail outlive the subject's purge, so
    a sender that names the person by email address or phone number (``requested_by: marie@example.fr`` for a
    self-service erasure), or by the subject's own customer_id or vendor id (``requested_by: C-100234``), is
    recorded as redacted, not kept for good. The body digest still covers the original."""
    if logs.looks_personal(requested_by) or logs.fold(requested_by) in _subject_values(document.get("subject")):
        return logs.REDACTED
    return requested_by


def _is_number(value: Any) -> bool:
    # true == 1 in Python: a boolean is no version number, the schema refuses it.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _dates(document: Mapping[str, Any], due_days_default: int | None) -> tuple[datetime, datetime]:
    """Every date a command carries or implies, in range, in one place (``timefmt.OutOfRange`` if not)."""
    requested_at = timefmt.in_range(timefmt.parse(document["requested_at"]))
    if document.get("due_at"):
        due_at = timefmt.parse(document["due_at"])
    elif due_days_default is not None:
        if due_days_default > (timefmt.LATEST - requested_at).days:
            raise timefmt.OutOfRange(f"requested_at plus {due_days_default} days is past {timefmt.LATEST.year}")
        due_at = requested_at + timedelta(days=due_days_default)
    else:
        due_at = timefmt.add_months(requested_at, 1)
    return requested_at, timefmt.in_range(due_at)
