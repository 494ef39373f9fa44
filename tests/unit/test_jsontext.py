"""The depth bound of ``worker.jsontext.loads``: checked before decoding, brackets in strings not counted."""

from __future__ import annotations

import json

import pytest

from worker.jsontext import MAX_DEPTH, JsonRejected, loads


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_deepest_allowed_nesting_is_read_and_one_more_level_is_refused() -> None:
    assert loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(JsonRejected, match="nested deeper"):
        loads(nested(MAX_DEPTH + 1))


def test_brackets_inside_strings_do_not_count_towards_the_depth() -> None:
    text = json.dumps({"note": "[{" * MAX_DEPTH, "list": [[["}]"]]]})
    assert loads(text)["list"] == [[["}]"]]]


def test_a_deep_branch_among_many_string_brackets_is_still_refused() -> None:
    text = '{"note": "' + "[" * MAX_DEPTH + '", "deep": ' + nested(MAX_DEPTH) + "}"
    with pytest.raises(JsonRejected, match="nested deeper"):
        loads(text)
