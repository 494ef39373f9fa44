"""docs/contract.md cannot drift from ``schemas/``, and the docs stay inside the repository: every
relative link they make leads to a file here, and none points outside it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def declared(node: Any) -> Iterator[str]:
    """Every property name and every string enum value anywhere in a schema."""
    if isinstance(node, dict):
        yield from node.get("properties", {})
        yield from (value for value in node.get("enum", []) if isinstance(value, str))
        for child in node.values():
            yield from declared(child)
    elif isinstance(node, list):
        for child in node:
            yield from declared(child)


def test_the_contract_names_every_field_and_value_of_the_schemas() -> None:
    # Named in inline code, alone (`request_id`) or in a shape (`{url, expires_at}`).
    code = {word for span in re.findall(r"`([^`]+)`", CONTRACT.read_text()) for word in re.findall(r"\w+", span)}
    for name in ("command.v1.json", "receipt.v1.json"):
        schema = json.loads((ROOT / "schemas" / name).read_text())
        names = set(declared(schema))
        assert {"request_id", "subject", "status", "state", "outcome", "manually_confirmed"} & names
        missing = sorted(n for n in names if n not in code)
        assert not missing, f"docs/contract.md does not name {missing} from schemas/{name}"


def test_the_docs_link_only_inside_the_repository() -> None:
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "SPEC" not in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            assert not re.match(r"[a-z]+:", target), f"{page.name} links out: {target}"
            assert (page.parent / target).resolve().is_relative_to(ROOT), f"{page.name}: {target}"
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
