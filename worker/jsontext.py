"""Strict, bounded JSON decoding for input nobody vouches for.

``json.loads`` as it comes accepts things that later break the worker: nesting deep enough to
raise ``RecursionError`` (in the decoder or in anything that walks the result), integer literals
past Python's digit limit (a ``ValueError`` that is not a ``JSONDecodeError``), ``NaN`` and
``Infinity``, number literals that overflow to ``inf``, and duplicate keys (where the last one
silently wins, so two readers of one command may disagree). ``loads`` refuses all of these with a
``JsonRejected`` whose message never quotes the input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # a command nests 4 levels; anything deeper is not a command
MAX_NUMBER_CHARS = 32  # a command's only number is schema_version

# A JSON string (complete or not) or one bracket: strings are skipped so brackets in them don't count.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class JsonRejected(ValueError):
    """The text is not JSON this worker will read. The message names the rule, never the input."""


def loads(text: str) -> Any:
    _check_depth(text)
    try:
        return json.loads(text, object_pairs_hook=_object, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except JsonRejected:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRejected(f"not JSON (error at character {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # belt and braces: a decoder limit we did not foresee
        raise JsonRejected(f"not readable JSON ({type(exc).__name__})") from None


def _check_depth(text: str) -> None:
    """Before decoding, so a deep text costs one linear scan and never a deep recursion."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # every opening bracket, even one inside a string, counted: the depth cannot be more
    depth = 0
    for token in _STRING_OR_BRACKET.findall(text):
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise JsonRejected(f"nested deeper than {MAX_DEPTH} levels")
        elif token in ("]", "}"):
            depth -= 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JsonRejected("an object repeats a key")
    return result


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise JsonRejected(f"a number literal is longer than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise JsonRejected(f"a number literal is longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise JsonRejected("a number literal is out of range")
    return value


def _constant(name: str) -> Any:
    raise JsonRejected("NaN and Infinity are not JSON")
