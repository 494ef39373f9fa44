"""The wheel the Dockerfile installs is complete: run from it alone, oubli migrates a store and
validates messages with the schemas it ships (nothing is read from the checkout)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


# What the Dockerfile's build stage copies; the wheel is built from exactly these.
IMAGE_SOURCES = ("pyproject.toml", "README.md", "worker", "connectors", "schemas")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in IMAGE_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],  # noqa: S603
                   check=True, cwd=out)
    (built,) = out.glob("oubli-*.whl")
    return built


def _run_from(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -S: no site processing, so the checkout's editable install cannot leak in; the third-party
    # libraries come from this interpreter's site-packages, oubli itself only from ``target``.
    path = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True, text=True,  # noqa: S603
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": path}, timeout=120, check=False)


def test_the_wheel_alone_migrates_a_store_and_validates_messages(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {"schemas/command.v1.json", "schemas/receipt.v1.json"} <= set(names)
    migrations = {n for n in names if re.match(r"worker/store/migrations/versions/\d{4}_\w+\.py$", n)}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "worker/store/migrations/versions").glob("*.py")
               if re.match(r"\d{4}_", p.name)}
    assert migrations == shipped and shipped

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),  # noqa: S603
                    str(wheel)], check=True)
    config = tmp_path / "oubli.yaml"
    config.write_text(yaml.safe_dump({
        "store_url": f"sqlite:///{tmp_path / 'store.db'}", "subject_key": "k",
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "systems": {"loyalty": {"connector": "loyalty", "settings": {"url": f"sqlite:///{tmp_path / 'l.db'}"}}},
    }))
    script = (
        "import sys, worker\n"
        "assert worker.__file__.startswith(sys.argv[1]), worker.__file__\n"
        "from worker import messages\n"
        "assert messages.schema_errors('command.v1', {}) != []\n"
        "from worker.cli import main\n"
        "sys.argv = ['oubli', '--config', sys.argv[2], 'migrate']\n"
        "main()\n"
    )
    migrated = _run_from(target, tmp_path, "-c", script, str(target), str(config))
    assert migrated.returncode == 0, migrated.stderr
    head = max(Path(n).name[:4] for n in shipped)
    assert f"-> {head}," in migrated.stderr  # alembic's log of the last migration it ran: the newest shipped
    again = _run_from(target, tmp_path, "-c", script, str(target), str(config))
    assert again.returncode == 0 and "up to date" in again.stdout


def test_the_dockerfile_matches_the_chart() -> None:
    """The image runs `oubli` as the chart's non-root user; the chart's command and user agree."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((ROOT / "helm/oubli/values.yaml").read_text())
    user = values["securityContext"]["runAsUser"]
    assert f"USER {user}:{values['securityContext']['runAsGroup']}" in dockerfile
    assert 'ENTRYPOINT ["oubli"]' in dockerfile
    assert 'command: ["oubli"]' in (ROOT / "helm/oubli/templates/deployment.yaml").read_text()
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, re.M)).split()
    assert sorted(copied) == sorted(IMAGE_SOURCES)
