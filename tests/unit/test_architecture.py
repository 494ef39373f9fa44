"""docs/architecture.md's diagram matches the code: every solid arrow is an import that exists, and no
module imports across a "never" arrow (the same rules .importlinter enforces, drawn)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The diagram's nodes, as module name prefixes; "worker" is the rest of worker/.
NODES = {
    "cli": ("worker.cli",), "app": ("worker.app",), "loop": ("worker.loop",), "compose": ("worker.compose",),
    "broker": ("worker.broker",), "store": ("worker.store",), "core": ("worker.core",),
    "connectors": ("connectors",), "devkit": ("devkit",), "worker": ("worker",),
}


def _node(module: str) -> str | None:
    for name, prefixes in NODES.items():
        if name != "worker" and any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return "worker" if module == "worker" or module.startswith("worker.") else None


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _arrows() -> set[tuple[str, str]]:
    """(from node, to node) for every import between two different nodes."""
    found: set[tuple[str, str]] = set()
    for folder in ("worker", "connectors", "devkit"):
        for path in (ROOT / folder).rglob("*.py"):
            source = _node(_module(path))
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    target = _node(name)
                    if source and target and target != source:
                        found.add((source, target))
    return found


def test_the_diagram_draws_imports_that_exist_and_none_across_a_never_arrow() -> None:
    text = (ROOT / "docs/architecture.md").read_text()
    diagram = text[text.index("```mermaid"):]
    diagram = diagram[:diagram.index("```\n", 10)]
    edges = re.findall(r"^\s*(\w+)(?:\[[^\]]*\])?\s*(-->|-\. never \.->)\s*(\w+)", diagram, re.M)
    assert edges and {a for a, _, b in edges} | {b for a, _, b in edges} <= set(NODES)
    arrows = _arrows()
    for source, kind, target in edges:
        if kind == "-->":
            assert (source, target) in arrows, f"the diagram draws {source} --> {target}, which the code lacks"
        else:
            assert (source, target) not in arrows, f"{source} imports {target} across a 'never' arrow"
