"""The compiled validator is a fast yes, never a wrong one: whatever it accepts, jsonschema accepts too.

``worker.messages.schema_errors`` asks the compiled schema (fastjsonschema) first and jsonschema only for
what it refuses. A command the compiled code let through that jsonschema would refuse would be recorded
against the contract, so this compares the two on valid commands, on commands mutated at random (any
value at any place, keys dropped and added) and on the edge cases where their dialects differ.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import messages
from worker.support import build_command

SCHEMA = "command.v1"


def _jsonschema_accepts(document: Any) -> bool:
    return not list(messages._validator(SCHEMA).iter_errors(document))


def _valid() -> dict[str, Any]:
    return build_command(kind="erasure", customer_id="C-1", emails=["a@example.org"], phones=["+33612345678"],
                         identifiers={"ga_client_id": ["123.456"]}, systems=["orders_db", "nosto"], reason="asked")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["", "erasure", "export", "2026-13-01T00:00:00Z", "2026-12-02T10:00:00Z",
                                              "standard", "background", "a@example.org", "x" * 300]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_commands(draw: st.DrawFn) -> Any:
    document: Any = _valid()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if not path:
            document = draw(json_values) if action == "replace" else document
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "drop":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=12))] = draw(json_values)
        elif isinstance(parent[last], list):
            parent[last].append(draw(json_values))
    return copy.deepcopy(document)


def test_a_valid_command_takes_the_fast_path() -> None:
    # Without this the fast path could silently never be taken, and the property below would prove nothing.
    assert messages._passes_compiled(SCHEMA, _valid())
    assert messages.schema_errors(SCHEMA, _valid()) == []


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_commands())
def test_the_compiled_validator_never_accepts_what_jsonschema_refuses(document: Any) -> None:
    if messages._passes_compiled(SCHEMA, document):
        assert _jsonschema_accepts(document)
    # And the answer callers see is jsonschema's, whichever path gave it.
    assert (messages.schema_errors(SCHEMA, document) == []) == _jsonschema_accepts(document)


@pytest.mark.parametrize(("field", "value"), [
    ("requested_at", "2026-13-01T00:00:00Z"),  # month 13: fastjsonschema's own date-time pattern lets it by
    ("requested_at", "2026-02-30T00:00:00Z"),
    ("requested_at", "2026-12-02 10:00:00"),
    ("kind", "Erasure"),
    ("schema_version", True),
    ("schema_version", 1.5),
])
def test_dialect_edges_are_refused_by_both(field: str, value: Any) -> None:
    document = {**_valid(), field: value}
    assert not _jsonschema_accepts(document)
    assert not messages._passes_compiled(SCHEMA, document)
    assert messages.schema_errors(SCHEMA, document)
