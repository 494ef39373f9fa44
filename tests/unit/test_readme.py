"""The README and the docs say what the code does: their config examples are configs the worker
accepts, the commands they name exist, every metric is listed, the retention example is the rules
the suite runs, and every test they cite exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from worker import config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def yaml_example(page: Path, heading: str) -> str:
    """The first YAML block under ``heading`` on ``page``."""
    text = page.read_text()
    example = re.search(r"```yaml\n(.*?)```", text[text.index(heading):], re.S)
    assert example is not None, heading
    return example.group(1)


def build(example: str) -> config.Settings:
    raw = yaml.safe_load(example.replace("…", "x"))
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", example))
    return config.build(raw, env={name: "value" for name in names})


def test_the_full_config_example_is_valid() -> None:
    settings = build(yaml_example(DOCS / "configuration.md", "## The full example"))
    assert settings.systems["orders_db"].concurrency == 8
    assert settings.identity_system == "orders_db"


def test_the_readme_minimal_config_is_valid() -> None:
    settings = build(yaml_example(README, "## A minimal configuration"))
    assert list(settings.systems) == ["orders_db"]


def test_every_command_the_readme_and_docs_name_exists() -> None:
    from worker.cli import cli

    text = "".join(page.read_text() for page in [README, *sorted(DOCS.glob("*.md"))])
    # In inline code (`oubli receipt …`) and at the start of a line in a code block.
    named = set(re.findall(r"(?:`|^)oubli (?:--config \S+ )?([a-z][a-z-]+)\b", text, re.M))
    assert {"receipt", "status", "requests", "retry", "confirm", "submit", "worker", "migrate",
            "sweep", "dlq", "report", "topics"} <= named
    assert named <= set(cli.commands), sorted(named - set(cli.commands))


def test_the_readme_or_the_operations_page_lists_every_metric() -> None:
    from worker import metrics

    text = README.read_text() + (DOCS / "operations.md").read_text()
    for family in metrics.REGISTRY.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}" in text, name


def test_the_retention_example_is_the_rules_the_suite_and_demo_run() -> None:
    from devkit.allsystems import RETENTION_RULES

    example = yaml_example(DOCS / "retention.md", "# Retention (`oubli sweep`)")
    systems = {name: {"connector": name, "settings": {"url": "sqlite:///x.db"}}
               for name in ("orders_db", "loyalty", "contact_forms")}

    def rules(retention: object) -> object:
        raw = {"store_url": "sqlite:///s.db", "subject_key": "k", "kafka": {"bootstrap_servers": "x:1"},
               "systems": systems, "retention": retention}
        return config.build(raw, env={}).retention

    assert rules(yaml.safe_load(example)["retention"]) == rules({"rules": RETENTION_RULES})


def test_the_docs_cite_only_tests_that_exist() -> None:
    # Test files live in tiers (tests/unit, tests/integration, tests/e2e): a flat path no longer exists.
    docs = [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md", ROOT / "helm" / "oubli" / "README.md"]
    for doc in docs:
        for cited in set(re.findall(r"`(tests/(?:\w+/)?test_[\w*]+\.py)`", doc.read_text())):
            assert list(ROOT.glob(cited)), f"{doc.name} cites {cited}"
