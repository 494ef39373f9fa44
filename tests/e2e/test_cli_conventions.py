"""The CLI's conventions (docs/operations.md): --json everywhere, exit codes by kind, one ``error:`` line,
and logs that are JSON lines only, even when the broker or the store is down."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from devkit.pipeline import raw_settings
from tests.unit.test_shutdown import closed_port
from worker import config, support
from worker.cli import cli
from worker.core.errors import ConfigError
from worker.metrics import VERSION
from worker.stall import error_sqlstate

OUBLI = str(Path(sys.executable).with_name("oubli"))
Result = TypeVar("Result")


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_takes_json_and_oubli_has_a_version() -> None:
    commands = _commands(cli)
    assert {"retry", "confirm", "migrate", "topics", "report", "dlq summary", "dlq replay"} <= set(commands)
    # `oubli worker` and `oubli web` are servers: they print nothing but their logs, JSON lines already.
    missing = [name for name, command in commands.items() if name not in ("worker", "web")
               and "--json" not in [opt for param in command.params for opt in param.opts]]
    assert not missing, missing
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"oubli {VERSION}"


def _config(tmp_path: Path, **raw: Any) -> Path:
    path = tmp_path / f"oubli-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"subject_key": "k", **raw}))
    return path


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OUBLI, *args], capture_output=True, text=True, timeout=timeout,  # noqa: S603
                          env={**os.environ, **(env or {})}, check=False)


def _only_json_and_one_error_line(stderr: str) -> str:
    """Every stderr line is a JSON log line but the one ``error: …`` line, returned."""
    assert "Traceback" not in stderr and "%3|" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for line in stderr.splitlines():
        if line and line not in errors:
            json.loads(line)
    assert len(errors) == 1, stderr
    return errors[0]


def test_exit_codes_not_found_usage_config_and_json_output(tmp_path: Path, kafka_bootstrap: str) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    raw = raw_settings(store_url=store, bootstrap=kafka_bootstrap, systems={})
    good = _config(tmp_path, **raw)
    runner = CliRunner()

    def oubli(*args: str) -> Any:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    migrated = oubli("--config", str(good), "migrate", "--json")
    assert migrated.exit_code == 0 and json.loads(migrated.stdout) == {"migrated": True, "up_to_date": True}
    created = oubli("--config", str(good), "topics", "--json")
    assert created.exit_code == 0 and len(json.loads(created.stdout)["created"]) == 3
    report = oubli("--config", str(good), "report", "--since", "2026-01-01", "--until", "2026-02-01", "--json")
    assert report.exit_code == 0 and "kinds" in json.loads(report.stdout)

    for args in (("status", "no-such-request"), ("status", "no-such-request", "--json"),
                 ("retry", "no-such-request", "--by", "sre", "--json"),
                 ("confirm", "no-such-request", "--system", "x", "--by", "sre", "--note", "n", "--json")):
        result = oubli("--config", str(good), *args)
        assert result.exit_code == support.NOT_FOUND, (args, result.output)
        assert result.stderr.startswith("error: ") and "no-such-request" in result.stderr and result.stdout == ""

    assert oubli("--config", str(good), "status").exit_code == support.USAGE  # missing argument
    assert oubli("--config", str(good), "requests", "--limit", "0").exit_code == support.USAGE
    assert oubli("--config", str(good), "no-such-command").exit_code == support.USAGE

    invalid = _config(tmp_path, store_url=store, worker={"max_in_flight": "s3cr3t"})
    unparseable = {  # a YAML error quotes the line it stopped at, and config lines hold passwords
        "template.yaml": b'store_url: "postgresql+psycopg://u:s3cr3t@h/db"\nkafka: {topics: {commands: a.${X}.b}}\n',
        "open-quote.yaml": b'store_url: "postgresql+psycopg://u:s3cr3t@h/db\nkafka: {a: \n',
        "tag.yaml": b"store_url: !s3cr3t x\n",
        "list.yaml": b"- s3cr3t\n",
        "latin1.yaml": b"store_url: s3cr3t\xe9\n",
    }
    for name, text in unparseable.items():
        (tmp_path / name).write_bytes(text)
    for config_args in (["--config", str(invalid)], ["--config", str(tmp_path / "missing.yaml")],
                        *(["--config", str(tmp_path / name)] for name in unparseable)):
        result = oubli(*config_args, "status", "r-1")
        assert result.exit_code == support.CONFIG, (config_args, result.output)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert "s3cr3t" not in result.stderr and "Traceback" not in result.stderr
    assert "line 2, column" in oubli("--config", str(tmp_path / "template.yaml"), "status", "r-1").stderr
    unusable_url = oubli("--config", str(_config(tmp_path, store_url="nosuchdb://x")), "status", "r-1")
    assert unusable_url.exit_code == support.CONFIG and "store_url" in unusable_url.stderr


def test_unavailable_store_and_broker_exit_4_with_one_clean_line(tmp_path: Path) -> None:
    port = closed_port()
    down = _config(tmp_path, store_url=f"postgresql+psycopg://u:p@127.0.0.1:{port}/db",
                   kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    status = _run("--config", str(down), "status", "r-1", "--json")
    assert status.returncode == support.UNAVAILABLE, status.stderr
    assert _only_json_and_one_error_line(status.stderr).startswith("error: the store is unavailable (")
    receipt = _run("--config", str(down), "receipt", "r-1", "--timeout", "2")
    assert receipt.returncode == support.UNAVAILABLE, receipt.stderr
    assert _only_json_and_one_error_line(receipt.stderr).startswith("error: the broker is unavailable")


class _Stderr:
    """A worker's stderr read line by line on a thread, so that a test can wait for an event and then signal."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, wanted: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        """Reads until a line is ``wanted``."""
        deadline = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            self.seen.append(line)
            if wanted(json.loads(line)):
                return
        raise AssertionError(f"never came: {self.seen}")

    def rest(self) -> list[str]:
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line)
        return self.seen


@contextlib.contextmanager
def _worker(path: Path) -> Iterator[tuple[subprocess.Popen[str], _Stderr]]:
    """``oubli worker --migrate``, killed on the way out if a failed assertion left it running."""
    process = subprocess.Popen([OUBLI, "--config", str(path), "worker", "--migrate"],  # noqa: S603
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, _Stderr(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_worker_logs_only_json_lines_when_the_broker_is_down(tmp_path: Path) -> None:
    path = _config(tmp_path, store_url=f"sqlite:///{tmp_path / 'store.db'}",
                   kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"},
                   worker={"http_port": 0, "drain_seconds": 1},
                   systems={"shopimind": {"connector": "shopimind", "settings": {"api_key": "k"}}})
    with _worker(path) as (worker, stderr):
        stderr.until(lambda entry: entry["event"] == "worker_started", timeout=60)
        stderr.until(lambda entry: entry["logger"] == "oubli.librdkafka", timeout=60)  # the closed port
        worker.send_signal(signal.SIGTERM)
        lines = stderr.rest()
        assert worker.wait(timeout=30) == 0, lines
        assert worker.stdout is not None and worker.stdout.read() == ""
        assert not any("%3|" in line or "Traceback" in line for line in lines), lines
        events = [json.loads(line) for line in lines]  # nothing else than JSON lines
        names = [e["event"] for e in events]
        assert "worker_started" in names and "worker_stopped" in names


def test_a_sigterm_while_the_worker_waits_for_its_store_ends_it_at_once_with_exit_0(tmp_path: Path) -> None:
    """A pod terminated during start-up (here: waiting out a store outage) used to die by the signal (exit 143)
    and, during a migration, in the middle of it. Now the wait ends at once and the process exits 0."""
    port = closed_port()
    path = _config(tmp_path, store_url=f"postgresql+psycopg://u:p@127.0.0.1:{port}/db",
                   kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
                   worker={"http_port": 0, "store_outage_exit_seconds": 600, "store_retry_max_seconds": 60},
                   systems={"shopimind": {"connector": "shopimind", "settings": {"api_key": "k"}}})
    with _worker(path) as (worker, stderr):
        stderr.until(lambda entry: entry["event"] == "store_unavailable", timeout=60)
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, stderr.rest()
        assert time.monotonic() - asked < 10  # not the outage's 600 s, nor a retry's wait
        events = [json.loads(line) for line in stderr.rest()]
        assert events[-1]["event"] == "worker_stopped" and events[-1]["before_start"] is True, events
        assert "worker_started" not in [e["event"] for e in events]


# Runs the `oubli` command's entry point in a fresh interpreter, and sends the process SIGTERM just as Python starts
# importing worker.cli (about a second of imports): a pod terminated in its first second.
_SIGTERM_DURING_IMPORT = """
import importlib.abc, os, signal, sys

class SigtermOnCliImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "worker.cli":
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, SigtermOnCliImport())
sys.argv = ["oubli", *sys.argv[1:]]
from worker.entry import main
main()
"""


def test_a_sigterm_while_the_oubli_command_imports_is_held_and_the_worker_exits_0(tmp_path: Path) -> None:
    """Before, the signal handler came after the CLI's imports: a signal in that first second ended the process
    by the signal (exit 143). Now it is held from the entry point's first line and the worker stops cleanly."""
    port = closed_port()
    path = _config(tmp_path, store_url=f"postgresql+psycopg://u:p@127.0.0.1:{port}/db",
                   kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
                   worker={"http_port": 0, "store_outage_exit_seconds": 600, "store_retry_max_seconds": 60},
                   systems={"shopimind": {"connector": "shopimind", "settings": {"api_key": "k"}}})
    result = subprocess.run([sys.executable, "-c", _SIGTERM_DURING_IMPORT, "--config", str(path), "worker"],  # noqa: S603
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events[-1]["event"] == "worker_stopped" and events[-1]["before_start"] is True, events


@pytest.mark.parametrize("args", [["--help"], ["--config", "{config}", "migrate"]], ids=["help", "migrate"])
def test_a_signal_held_while_the_oubli_command_imports_still_ends_any_other_command(tmp_path: Path,
                                                                                     args: list[str]) -> None:
    """Only the worker turns SIGTERM into a drain: any other command gets the held signal as soon as it is known
    not to be the worker (a migration never starts), or as it ends (``--help``)."""
    path = _config(tmp_path, store_url=f"sqlite:///{tmp_path / 'store.db'}",
                   kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"})
    result = subprocess.run([sys.executable, "-c", _SIGTERM_DURING_IMPORT,  # noqa: S603
                             *(a.format(config=path) for a in args)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == -signal.SIGTERM, (result.returncode, result.stderr)
    assert not (tmp_path / "store.db").exists()  # the migration never ran


def test_the_worker_refuses_to_start_without_a_system(tmp_path: Path) -> None:
    """With no system every command would be rejected (a terminal receipt) as no_systems: exit 5, one line."""
    path = _config(tmp_path, store_url=f"sqlite:///{tmp_path / 'store.db'}",
                   kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"}, worker={"http_port": 0})
    result = _run("--config", str(path), "worker", "--migrate", timeout=30)
    assert result.returncode == support.CONFIG, result.stderr
    assert _only_json_and_one_error_line(result.stderr).startswith("error: the config names no systems")


def test_an_uncaught_error_is_one_redacted_json_line() -> None:
    code = ("import threading; from worker import logs; logs.configure(); logs.install_excepthooks(); "
            "t = threading.Thread(target=lambda: 1 / 0, name='side'); t.start(); t.join(); "
            "raise ValueError('no match for marie@example.fr')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: S603
                            timeout=30, check=False)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["event"], line["error_type"], line["thread"]) for line in lines] == [
        ("uncaught_exception", "ZeroDivisionError", "side"), ("uncaught_exception", "ValueError", None)]
    assert "Traceback" in lines[1]["exception"] and "marie@example.fr" not in result.stderr


def test_log_level_is_a_setting_and_store_errors_carry_their_sqlstate() -> None:
    assert config.build({"subject_key": "k", "log_level": "debug"}, env={}).log_level == "DEBUG"
    assert config.build({"subject_key": "k"}, env={"OUBLI_LOG_LEVEL": "WARNING"}).log_level == "WARNING"
    with pytest.raises(ConfigError, match="log_level"):
        config.build({"subject_key": "k", "log_level": "chatty"}, env={})

    class Dropped(Exception):
        sqlstate = "57P01"  # admin_shutdown: PostgreSQL restarted

    error = sa.exc.OperationalError("SELECT … WHERE email = %s", ("marie@example.fr",), Dropped("bye"))
    assert error_sqlstate(error) == "57P01"
    line = support.cli_error(error)
    assert line is not None and line.exit_code == support.UNAVAILABLE
    assert line.message == "the store is unavailable (Dropped, SQLSTATE 57P01)"


def _each(run: Callable[[Any], Result], variants: Sequence[Any]) -> Iterator[tuple[Any, Result]]:
    """(variant, run(variant)) for each, in order, the processes running side by side: each one's
    seconds go to Python's start-up, and the suite waits for them one after the other otherwise."""
    with ThreadPoolExecutor(min(len(variants), 4)) as pool:
        yield from zip(variants, pool.map(run, variants), strict=True)


def _run_bytes(*args: bytes | str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OUBLI, *args], capture_output=True, timeout=timeout, check=False)  # noqa: S603


def test_an_argument_that_is_not_utf8_is_a_usage_error_for_every_command(tmp_path: Path, pg_url: str) -> None:
    """Python hands such bytes over as surrogate escapes, which no driver or encoder takes: exit 2, one line."""
    cfg = str(_config(tmp_path, store_url=pg_url,
                      kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"}))
    variants = ((b"status", b"r-\xff"), (b"receipt", b"\xff", b"--timeout", b"1"),
                (b"requests", b"--customer-id", b"C-\xff"),
                (b"submit", b"--kind", b"erasure", b"--customer-id", b"\xffC"),
                (b"confirm", b"r-1", b"--system", b"a", b"--by", b"s", b"--note", b"\xff"))
    for args, result in _each(lambda args: _run_bytes("--config", cfg, *args), variants):
        assert result.returncode == support.USAGE, (args, result.stderr)
        stderr = result.stderr.decode("utf-8")  # nothing but UTF-8: the raw byte is not echoed
        line = _only_json_and_one_error_line(stderr)
        assert "UTF-8" in line and "\\udcff" not in line and "uncaught_exception" not in stderr


def test_error_lines_never_echo_control_characters(tmp_path: Path) -> None:
    local = _config(tmp_path, store_url=f"sqlite:///{tmp_path / 'store.db'}")
    assert _run("--config", str(local), "migrate").returncode == 0
    variants = (("status", "r-\x1b]0;owned\x07\x1b[2J"), ("status", "r-\u009b31m"),
                ("requests", "--limit", "\x1b[31m"), ("confirm", "r-\x1b[1m", "--system", "a", "--by", "s",
                                                      "--note", "n"))
    for args, result in _each(lambda args: _run("--config", str(local), *args), variants):
        assert result.returncode in (support.USAGE, support.NOT_FOUND), (args, result.stderr)
        assert not [c for c in result.stderr if c not in "\n" and not c.isprintable()], repr(result.stderr)


def test_dlq_commands_exit_4_quickly_when_the_broker_or_the_store_is_down(tmp_path: Path,
                                                                          kafka_bootstrap: str) -> None:
    port = closed_port()
    down = _config(tmp_path, store_url=f"postgresql+psycopg://u:p@127.0.0.1:{port}/db",
                   kafka={"bootstrap_servers": f"127.0.0.1:{port}"})

    def timed(args: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = _run("--config", str(down), *args)
        return result, time.monotonic() - started

    # All three at once: each waits out the broker's metadata timeout, which is what it proves.
    variants = (("dlq", "summary"), ("dlq", "replay", "--by", "ops"), ("dlq", "replay", "--dry-run", "--json"))
    for args, (result, seconds) in _each(timed, variants):
        assert result.returncode == support.UNAVAILABLE, (args, result.stderr)
        assert _only_json_and_one_error_line(result.stderr).startswith("error: the broker is unavailable")
        assert seconds < 30, args

    from devkit.pipeline import raw_settings, settings_from, subject_command
    from tests.integration.test_dlq import dead_letter

    raw = raw_settings(store_url=f"postgresql+psycopg://u:p@127.0.0.1:{port}/db", bootstrap=kafka_bootstrap,
                       systems={})
    settings = settings_from(raw)
    from worker import kafka as kafka_module

    kafka_module.ensure_topics(settings.kafka)
    dead_letter(settings, subject_command(), "unknown_system")
    store_down = _run("--config", str(_config(tmp_path, **raw)), "dlq", "replay", "--by", "ops")
    assert store_down.returncode == support.UNAVAILABLE, store_down.stderr
    assert _only_json_and_one_error_line(store_down.stderr).startswith("error: the store is unavailable (")
