"""``oubli_operator_actions_total``: systems confirmed and retried by hand, by system and action, as every worker's
/metrics reports them. The CLI that does it exits at once, so the count comes from the store (the audit trail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.pipeline import subject_command
from tests.unit.test_loop import World
from worker import metrics
from worker.core.timefmt import utcnow

NAME = "oubli_operator_actions_total"


def _count(system: str, action: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(NAME, {"system": system, "action": action})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, systems=("alpha", "beta"), permanent=True)
    w.loop.start()
    yield w
    w.loop.close()


def test_confirmations_and_retries_by_hand_are_counted_by_system_and_action(world: World) -> None:
    first, second = subject_command(systems=["alpha", "beta"]), subject_command(systems=["alpha", "beta"])
    world.send(first)
    world.send(second)
    store = world.loop.store

    def all_failed() -> bool:
        states = [task["state"] for command in (first, second) if world.requests() == 2
                  for task in store.get(command["request_id"])[1]]
        return len(states) == 4 and set(states) == {"failed"}

    world.until(all_failed)
    store.operator_confirm(first["request_id"], "alpha", actor="sre-jean", note="done by hand", now=utcnow())
    store.operator_confirm(second["request_id"], "alpha", actor="sre-jean", note="done by hand", now=utcnow())
    store.operator_retry(first["request_id"], None, actor="sre-jean", now=utcnow())  # beta, the one still failed
    world.loop._refresh_gauges()
    assert _count("alpha", "confirm") == 2 and _count("alpha", "retry") is None
    assert _count("beta", "retry") == 1 and _count("beta", "confirm") is None
    samples = [s for family in metrics.REGISTRY.collect() if family.name == "oubli_operator_actions"
               for s in family.samples]
    assert samples and all(set(s.labels) == {"system", "action"} for s in samples)  # never a request id
