"""Command validation: stable error codes, bounds, signatures and defaults, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from worker import messages
from worker.core.errors import InvalidCommand
from worker.support import build_command

SYSTEMS = frozenset({"orders_db", "loyalty"})


def command(**changes: Any) -> dict[str, Any]:
    body = build_command(kind="erasure", customer_id="C-100234", emails=["marie.dupont@example.fr"],
                         phones=["+33612345678"], request_id="5f0c9a8e-3c1e-4f4a-9d55-0d2b1f7b8a10",
                         requested_at=datetime(2026, 1, 31, 10, tzinfo=UTC))
    body.update(changes)
    return body


def parse(body: Any, *, secret: bytes | None = None, signature: str | None = None) -> messages.Command:
    value = json.dumps(body).encode()
    return messages.parse(messages.decode(value), value=value, signature=signature, signing_secret=secret,
                          known_systems=SYSTEMS)


def code_of(body: Any, **kwargs: Any) -> tuple[str, str | None]:
    with pytest.raises(InvalidCommand) as caught:
        parse(body, **kwargs)
    return caught.value.code, caught.value.request_id


def test_a_valid_command_parses_and_due_at_defaults_to_one_calendar_month() -> None:
    parsed = parse(command())
    assert parsed.kind == "erasure" and parsed.systems is None
    assert parsed.due_at == datetime(2026, 2, 28, 10, tzinfo=UTC)  # 31 Jan + 1 month, clamped


@pytest.mark.parametrize(("change", "code"), [
    ({"schema_version": 2}, "unsupported_schema_version"),
    ({"kind": "rectification"}, "schema_violation"),
    ({"systems": ["orders_db", "crm"]}, "unknown_system"),
    ({"reason": "x" * 1001}, "schema_violation"),
    ({"unexpected": True}, "schema_violation"),
    ({"subject": {"customer_id": "C-1", "emails": [f"a{i}@example.fr" for i in range(21)]}}, "schema_violation"),
    ({"subject": {"customer_id": "C-1", "phones": ["0612345678"]}}, "schema_violation"),
    ({"subject": {"customer_id": "x" * 129}}, "schema_violation"),
    ({"requested_at": "yesterday"}, "schema_violation"),
])
def test_invalid_commands_get_a_stable_code_and_keep_their_request_id(change: dict[str, Any], code: str) -> None:
    assert code_of(command(**change)) == (code, "5f0c9a8e-3c1e-4f4a-9d55-0d2b1f7b8a10")


def test_a_missing_schema_version_is_a_schema_violation() -> None:
    body = command()
    del body["schema_version"]
    assert code_of(body)[0] == "schema_violation"


def test_an_unreadable_request_id_is_reported_as_none() -> None:
    assert code_of(command(request_id="has space"))[1] is None
    assert code_of(["not", "an", "object"]) == ("schema_violation", None)


@pytest.mark.parametrize(("value", "code"), [
    (b"\xff\xfe", "invalid_json"), (b"{", "invalid_json"), (None, "invalid_json"),
    (b" " * (64 * 1024 + 1), "too_large"),
])
def test_undecodable_values(value: bytes | None, code: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        messages.decode(value)
    assert caught.value.code == code


def test_errors_name_fields_never_values() -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse(command(subject={"customer_id": "C-1", "emails": ["not-an-email-marie"]}))
    assert "marie" not in caught.value.message
    assert "$.subject.emails[0]" in caught.value.message


def test_signatures_are_required_when_a_secret_is_configured() -> None:
    body = command()
    value = json.dumps(body).encode()
    good = messages.sign(value, b"secret")
    assert parse(body, secret=b"secret", signature=good).request_id == body["request_id"]
    assert code_of(body, secret=b"secret", signature=None)[0] == "bad_signature"
    assert code_of(body, secret=b"secret", signature=messages.sign(value, b"other"))[0] == "bad_signature"


def test_a_signature_in_upper_case_hex_is_the_same_signature() -> None:
    """Hex has two spellings: Java's ``DatatypeConverter.printHexBinary`` and .NET's ``Convert.ToHexString`` write
    upper case. A producer that signed correctly with either was dead-lettered as ``bad_signature``."""
    body = command()
    value = json.dumps(body).encode()
    upper = messages.sign(value, b"secret").upper()
    assert parse(body, secret=b"secret", signature=upper).request_id == body["request_id"]
    assert parse(body, secret=b"secret", signature="sha256=" + upper).request_id == body["request_id"]
    assert messages.verify_signature(value, upper.encode(), b"secret")
    assert code_of(body, secret=b"secret", signature=messages.sign(value, b"other").upper())[0] == "bad_signature"


def test_subject_ref_is_keyed_and_stable() -> None:
    ref = messages.subject_ref(b"k1", "C-100234")
    assert ref == messages.subject_ref(b"k1", "C-100234") != messages.subject_ref(b"k2", "C-100234")
    assert ref.startswith("hmac-sha256:") and "C-100234" not in ref


def test_previous_signing_secrets_still_verify_during_a_rotation() -> None:
    body = command()
    value = json.dumps(body).encode()

    def parsed(signed_with: bytes) -> messages.Command:
        return messages.parse(messages.decode(value), value=value, signature=messages.sign(value, signed_with),
                              signing_secret=b"new", previous_secrets=(b"old",), known_systems=SYSTEMS)

    assert parsed(b"new").request_id == parsed(b"old").request_id == body["request_id"]
    with pytest.raises(InvalidCommand) as caught:
        parsed(b"retired")
    assert caught.value.code == "bad_signature"


def test_schema_violations_never_quote_the_senders_own_keys_or_values() -> None:
    """A rejection's message reaches the DLQ headers, the audit trail and a ``rejected`` receipt."""
    body = command(subject={"customer_id": "C-1", "marie.dupont@example.fr": "x",
                            "identifiers": {"marie.dupont@example.fr": ["y" * 300], "ga_client_id": ["+33612345678"]}})
    code, request_id = code_of(body)
    assert (code, request_id) == ("schema_violation", body["request_id"])
    with pytest.raises(InvalidCommand) as caught:
        parse(body)
    message = caught.value.message
    assert "$.subject.identifiers[*][0]: maxLength violated" in message
    assert "$.subject: additionalProperties violated" in message
    for personal in ("marie", "example.fr", "+33612345678", "yyy"):
        assert personal not in message


def test_a_rejected_command_is_explained_from_the_first_items_of_each_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema checks every keyword of a rejected command, and compares unsortable items (ints mixed with
    strings) pair by pair for ``uniqueItems``: 11,000 such emails in 64 KiB held the worker for minutes. The
    explanation sees each array cut one item past the longest the schema allows, and still names the place."""
    emails = [item for i in range(5_500) for item in (i, str(i))]
    body = command(subject={"customer_id": "C-1", "emails": emails})
    assert len(json.dumps(body, separators=(",", ":"))) < messages.MAX_COMMAND_BYTES
    real = messages._validator("command.v1")
    seen: list[int] = []

    class Spy:
        def iter_errors(self, document: Any) -> Any:
            seen.append(len(document["subject"]["emails"]))
            return real.iter_errors(document)

    monkeypatch.setattr(messages, "_validator", lambda _name: Spy())
    problems = messages.schema_errors("command.v1", body)
    assert seen == [65]  # systems allow 64, the longest array of the schema
    assert "$.subject.emails: maxItems violated" in problems
    assert "$.subject.emails: uniqueItems violated" not in problems  # 65 distinct items


def test_a_rejected_command_is_explained_from_the_first_members_of_each_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects as arrays: 2,500 identifier kinds of two lists each fit in 64 KiB and cost 0.2-0.4 s of jsonschema
    errors; a batch of 500 held the worker's loop for minutes, past its 60 s liveness. The explanation sees each
    object cut one member past the most any object of the schema may hold, and still names the places."""
    identifiers = {f"k{i}": [[1], [1]] for i in range(2_500)}
    body = command(subject={"customer_id": "C-1", "identifiers": identifiers}, **{f"x{i}": 1 for i in range(500)})
    assert len(json.dumps(body, separators=(",", ":"))) < messages.MAX_COMMAND_BYTES
    real = messages._validator("command.v1")
    seen: list[tuple[int, int]] = []

    class Spy:
        def iter_errors(self, document: Any) -> Any:
            seen.append((len(document), len(document["subject"]["identifiers"])))
            return real.iter_errors(document)

    monkeypatch.setattr(messages, "_validator", lambda _name: Spy())
    problems = messages.schema_errors("command.v1", body)
    assert seen == [(21, 21)]  # identifiers allow 20 kinds, the most members of any object of the schema
    assert {"$: additionalProperties violated", "$.subject.identifiers: maxProperties violated"} <= set(problems)


def test_every_object_of_the_schema_is_bounded() -> None:
    """Cutting objects is sound only while each is closed or has a maxProperties: else nothing is cut."""
    assert messages._object_cap("command.v1") == 21


def test_a_cut_array_never_makes_a_command_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    # Were an array of the schema unbounded, its bad items past the cut would go unseen: still rejected.
    monkeypatch.setattr(messages, "_array_cap", lambda _name: 1)
    body = command(subject={"customer_id": "C-1", "emails": ["a@example.org", 5]})
    assert messages.schema_errors("command.v1", body) == ["$: an array or an object is larger than the schema allows"]


def test_unknown_systems_are_named_by_position_never_by_name() -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse(command(systems=["orders_db", "orders_db_marie_dupont", "loyalty", "dupont_1984"]))
    assert caught.value.code == "unknown_system"
    assert str(caught.value.message) == "systems[1], systems[3]: not a system configured here (2 of 4)"
