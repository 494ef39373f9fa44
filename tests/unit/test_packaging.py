"""The wheel the Dockerfile installs is complete: run from it alone, oubli migrates a store and
validates messages with the schemas it ships (nothing is read from the checkout). The hashed locks
pin every dependency pyproject.toml declares, within its range; every third-party import is declared;
the Dockerfile installs only from the lock, on a base pinned by digest, from a small build context."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_wheel_ships_no_dev_kit(wheel: Path) -> None:
    """The fakes, vendor stand-ins and sample data live in devkit/, outside the product: the wheel holds
    only worker, connectors and schemas (and the Dockerfile copies only those, test below)."""
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.startswith("oubli-")}
    assert packages == {"worker", "connectors", "schemas"}, packages
    dev_kit = re.compile(r"(^|/)(devkit|sampledata|samples|shop_schemas|standins|fakes\.py)(/|$)")
    leaked = [n for n in names if dev_kit.search(n)]
    assert leaked == []
    assert "devkit" not in IMAGE_SOURCES and (ROOT / "devkit/__init__.py").is_file()
    assert {"worker/py.typed", "connectors/py.typed"} <= set(names)  # PEP 561: a custom connector type-checks


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


# ---- The lock files: what `make install` and the image install, checked against pyproject.toml ----

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROD_LOCK, DEV_LOCK = ROOT / "requirements.lock", ROOT / "requirements-dev.lock"
# Modules of this repository, not of a distribution.
LOCAL_MODULES = {"worker", "connectors", "schemas", "tests", "devkit"}


def _requirements(group: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    raw = project["dependencies"] if group == "prod" else project["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def _pins(lock: Path) -> dict[str, list[tuple[Version, str]]]:
    """Every `name==version [; marker]` of a lock, with the hashes of its block; a universal lock may
    pin one name twice under exclusive markers (one version for Python 3.11, another for 3.12+)."""
    pins: dict[str, list[tuple[Version, str]]] = {}
    for block in re.split(r"\n(?=\S)", lock.read_text()):
        head = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if head:
            pins.setdefault(canonicalize_name(head[1]), []).append((Version(head[2]), block))
    return pins


def test_the_locks_pin_every_dependency_of_pyproject_within_its_range() -> None:
    prod, dev = _pins(PROD_LOCK), _pins(DEV_LOCK)
    for lock, pins, groups in ((PROD_LOCK, prod, ("prod",)), (DEV_LOCK, dev, ("prod", "dev"))):
        for req in (r for g in groups for r in _requirements(g)):
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} is in pyproject.toml but not in {lock.name}: run `make lock`"
            for version, _ in pins[name]:
                assert req.specifier.contains(version, prereleases=True), \
                    f"{lock.name} pins {name}=={version}, outside pyproject's {req}: run `make lock`"
            for extra in sorted(req.extras):  # psycopg[binary] needs psycopg-binary locked too
                needed = [Requirement(r) for r in metadata.requires(req.name) or []]
                wanted = {canonicalize_name(r.name) for r in needed
                          if r.marker and r.marker.evaluate({"extra": extra}) and not r.marker.evaluate({"extra": ""})}
                assert wanted and wanted <= pins.keys(), f"{lock.name} lacks {req}'s {wanted - pins.keys()}"
        for name, entries in pins.items():
            assert all("--hash=sha256:" in block for _, block in entries), f"{lock.name}: {name} has no hash"
    # `make install` builds the editable install with the dev lock's build backend (no isolation).
    for req in map(Requirement, PYPROJECT["build-system"]["requires"]):
        assert all(req.specifier.contains(v) for v, _ in dev.get(canonicalize_name(req.name), [])) and \
            canonicalize_name(req.name) in dev, f"{DEV_LOCK.name} lacks the build backend {req}"
    # The image's lock is resolved under the dev lock: tests run exactly the versions that ship.
    for name, entries in prod.items():
        assert {v for v, _ in entries} <= {v for v, _ in dev.get(name, [])}, f"{name} differs between the locks"


def test_requires_python_is_3_11_to_3_13() -> None:
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    supported = [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if spec.contains(v)]
    assert supported == ["3.11", "3.12", "3.13"], f"requires-python {spec} supports {supported}"
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()  # the lock resolves from the floor up
    assert "# This file was autogenerated by uv" in DEV_LOCK.read_text()


def _imports(folder: str) -> dict[str, str]:
    """Top-level modules that ``folder`` imports at run time (not under ``if TYPE_CHECKING:``)."""
    found: dict[str, str] = {}

    def visit(node: ast.AST, path: Path) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, path)
            return
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            found.setdefault(name.split(".")[0], path.relative_to(ROOT).as_posix())
        for child in ast.iter_child_nodes(node):
            visit(child, path)

    for path in sorted((ROOT / folder).rglob("*.py")):
        visit(ast.parse(path.read_text()), path)
    return {m: p for m, p in found.items() if m not in sys.stdlib_module_names and m not in LOCAL_MODULES}


@pytest.mark.parametrize(("folder", "groups"), [("worker", ("prod",)), ("connectors", ("prod",)),
                                                ("tests", ("prod", "dev")), ("devkit", ("prod", "dev"))])
def test_every_third_party_import_is_a_declared_dependency(folder: str, groups: tuple[str, ...]) -> None:
    """An import that works only because another package pulls its distribution in (botocore through
    boto3) breaks when that package changes its own dependencies: declare it."""
    declared = {canonicalize_name(r.name) for g in groups for r in _requirements(g)}
    providers = metadata.packages_distributions()
    for module, where in _imports(folder).items():
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists & declared, f"{where} imports {module} (from {sorted(dists) or 'nothing installed'}), " \
                                 f"not declared in pyproject.toml's {' or '.join(groups)} dependencies"


# ---- The Dockerfile and its build context ----

def test_the_dockerfile_pins_its_base_and_installs_only_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base[1]), "base not pinned"
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    install = next(r for r in re.findall(r"^RUN (.+?)(?<!\\)$", dockerfile, re.M | re.S) if "requirements.lock" in r)
    assert "--mount=type=bind,source=requirements.lock," in install  # not COPY: the lock and wheels leave no layer
    assert "--mount=type=bind,from=build,source=/wheels," in install
    assert re.search(r"pip install --require-hashes [^&]*-r \S+requirements\.lock", install)
    assert re.search(r"pip install --no-deps [^&]*oubli-\*\.whl", install)
    assert "--no-build-isolation" in dockerfile  # the wheel is built with the pinned base's setuptools
    version = PYPROJECT["project"]["version"]
    assert f"ARG VERSION={version}\n" in dockerfile
    assert yaml.safe_load((ROOT / "helm/oubli/Chart.yaml").read_text())["appVersion"] == version
    labels = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", dockerfile))
    assert {"title", "description", "version", "revision", "created", "base.name"} <= labels


def _dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, line = line.startswith("!"), line.lstrip("!").strip("/")
        tokens = re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", line)
        regex = "".join({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(t, t if t.startswith("[")
                                                                                       else re.escape(t))
                        for t in tokens)
        rules.append((negated, re.compile(regex)))
    return rules


def test_the_build_context_holds_the_image_sources_and_nothing_heavy() -> None:
    rules = _dockerignore_rules()
    needed = [p.relative_to(ROOT).as_posix() for name in (*IMAGE_SOURCES, "requirements.lock")
              for p in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts]
    assert "requirements.lock" in needed and "schemas/command.v1.json" in needed
    assert [p for p in needed if _dockerignored(p, rules)] == []
    for heavy in (".venv/bin/python", ".cache/pip/http/x", ".git/HEAD", "tests/unit/test_packaging.py",
                  ".pytest_cache/v/x", ".mypy_cache/3.11/x.json", ".hypothesis/examples/x", "helm/oubli/Chart.yaml",
                  "requirements-dev.lock", "worker/__pycache__/app.cpython-311.pyc", "oubli.egg-info/PKG-INFO",
                  "store.db"):
        assert _dockerignored(heavy, rules), f"{heavy} would be sent to the builder"
