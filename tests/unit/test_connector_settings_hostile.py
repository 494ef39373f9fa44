"""Connector settings an operator can get wrong: the worker refuses them at start with a clear ConfigError (exit 5),
never with a traceback, never by running without a deadline.

``.inf`` is valid YAML for a number, and ``float("inf")`` passed every ``>= minimum`` check: ``timeout_seconds:
.inf`` left vendor calls with no deadline at all, ``daily_quota``/``max_response_bytes: .inf`` crashed the start
with an OverflowError traceback (exit 1), and ``rate_limit.per_second: .inf`` started a worker whose gauges step
then failed every second."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors import registry
from worker.core.connector import ConnectorContext
from worker.core.errors import ConfigError

SHOPIMIND = {"api_key": "k"}
GA = {"property_id": "123456789", "access_token": "t"}


def _now() -> datetime:
    return datetime(2026, 12, 4, tzinfo=UTC)


@pytest.mark.parametrize(("connector", "settings"), [
    ("shopimind", {**SHOPIMIND, "timeout_seconds": math.inf}),
    ("shopimind", {**SHOPIMIND, "connect_timeout_seconds": "inf"}),
    ("shopimind", {**SHOPIMIND, "max_response_bytes": math.inf}),
    ("shopimind", {**SHOPIMIND, "rate_limit": {"per_second": math.inf}}),
    ("shopimind", {**SHOPIMIND, "rate_limit": {"per_second": 1, "burst": "Infinity"}}),
    ("shopimind", {**SHOPIMIND, "timeout_seconds": math.nan}),
    ("google_analytics", {**GA, "daily_quota": math.inf}),
    ("call_recordings", {"bucket": "b", "read_timeout_s": math.inf}),
    ("call_recordings", {"bucket": "b", "connect_timeout_s": -1}),
    ("call_recordings", {"bucket": "b", "connect_timeout_s": "soon"}),
])
def test_non_finite_or_malformed_numbers_are_refused_at_start(connector: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as refused:
        registry.build("probe", connector, settings, ConnectorContext(now=_now))
    assert "probe" in str(refused.value) or "call_recordings" in str(refused.value)


def test_a_setting_of_the_wrong_shape_is_a_config_error_naming_the_system_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match="system probe"):
        registry.build("probe", "devkit.fakes", {"url": "sqlite://", "transient_failures": [1]},
                       ConnectorContext(now=_now))


@pytest.mark.parametrize(("connector", "settings", "named"), [
    ("shopimind", {**SHOPIMIND, "rate_limt": {"per_second": 1}}, "rate_limt"),  # the vendor's default rate instead
    ("shopimind", {**SHOPIMIND, "rate_limit": {"per_secnd": 0.5}}, "rate_limit.per_secnd"),
    ("google_analytics", {**GA, "daily_qouta": 100}, "daily_qouta"),
    ("nosto", {"api_token": "t", "timeout_second": 3}, "timeout_second"),
])
def test_a_vendor_setting_nothing_reads_is_refused_by_name(
    connector: str, settings: dict[str, Any], named: str,
) -> None:
    """A typo'd optional key was ignored in silence, so the operator's limit or deadline never applied."""
    with pytest.raises(ConfigError, match=f"system probe: the {connector} connector has no setting {named}"):
        registry.build("probe", connector, settings, ConnectorContext(now=_now))


def test_a_connector_whose_own_import_is_missing_is_named_as_such(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """It was "no connector module named 'vendorpkg.conn'": a typo hunt in the config for a missing dependency."""
    package = tmp_path / "vendorpkg_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "conn.py").write_text("import no_such_dependency_for_oubli_tests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="needs the module 'no_such_dependency_for_oubli_tests'"):
        registry.build("alpha", "vendorpkg_probe.conn", {}, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no connector module named 'vendorpkg_probe.absent'"):
        registry.build("alpha", "vendorpkg_probe.absent", {}, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no connector module named 'absent_connector'"):
        registry.build("alpha", "absent_connector", {}, None)  # type: ignore[arg-type]
