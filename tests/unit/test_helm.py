"""The Helm chart helm/oubli, rendered with the real helm CLI and read back.

``scripts/helm-check`` (lint --strict, template, offline validation against the Kubernetes schemas)
runs once as a whole; the other tests render the chart with chosen values and check what a
production cluster depends on: probes, security context, grace period versus drain, hooks, KEDA,
the schema's refusals, and that the ConfigMap holds a config the worker itself accepts.

helm is built into .cache/bin by ``scripts/helm-check --install-only`` (``make test`` runs it; CI starts
it beside the suite, and the ``helm`` fixture waits for that build). Without it these tests are skipped
on a developer's machine and fail when ``CI=true``.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connectors import registry
from worker import config as oubli_config
from worker.core.connector import ConnectorContext

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "oubli"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
CACHED_HELM = ROOT / ".cache" / "bin" / "helm"
ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# scripts/helm-check holds these locks while it builds helm or promtool (and until it exits).
BUILD_LOCKS = (CACHED_HELM.with_name("helm.lock"), CACHED_HELM.with_name("promtool.lock"))
BUILD_WAIT_SECONDS = 1200.0


def wait_for_tool_builds(locks: tuple[Path, ...] = BUILD_LOCKS, timeout: float = BUILD_WAIT_SECONDS) -> None:
    """Waits while a ``scripts/helm-check`` builds the tools: CI starts that build beside the suite, which
    reaches these tests minutes later, and a half-built binary must not be run."""
    deadline = time.monotonic() + timeout
    for lock in locks:
        if not lock.exists():
            continue
        with lock.open("a") as held:
            while True:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return  # the checks below then say what is missing
                    time.sleep(1)
                    continue
                fcntl.flock(held, fcntl.LOCK_UN)
                break


@pytest.fixture(scope="module")
def helm() -> str:
    wait_for_tool_builds()
    found = str(CACHED_HELM) if CACHED_HELM.exists() else shutil.which("helm")
    if found is None:
        _missing("helm is not installed; build it with `scripts/helm-check --install-only`")
    assert found is not None
    return found


def _run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def _values_args(tmp_path: Path, values: dict[str, Any] | None, files: tuple[Path, ...]) -> list[str]:
    args: list[str] = []
    for file in files:
        args += ["--values", str(file)]
    if values is not None:
        path = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
        args += ["--values", str(path)]
    return args


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None,
           files: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    result = _run(helm, "template", "oubli", str(CHART), "--namespace", "privacy",
                  *_values_args(tmp_path, values, files))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(helm: str, tmp_path: Path, values: dict[str, Any]) -> str:
    result = _run(helm, "template", "oubli", str(CHART), *_values_args(tmp_path, values, ()))
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


@pytest.fixture(scope="module")
def default_docs(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(helm, tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def all_on_docs(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(helm, tmp_path_factory.mktemp("all-on"), files=(ALL_ON,))


# --- the whole check, as CI and developers run it -----------------------------------------------


def test_helm_check_lints_renders_and_validates(helm: str) -> None:
    if not CACHED_HELM.exists():
        _missing("scripts/helm-check uses .cache/bin/helm; build it with `scripts/helm-check --install-only`")
    result = subprocess.run([str(ROOT / "scripts" / "helm-check")], capture_output=True, text=True, timeout=600,
                            check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lint --strict (default values)" in result.stdout
    assert "lint --strict (all-on values)" in result.stdout
    assert "FAIL" not in result.stderr
    # The all-on render has the CRD objects, checked against the CRDs' own schemas, and its rules by promtool.
    assert "1 PrometheusRule, 1 ScaledObject, 1 Service, 2 ServiceAccount, 1 ServiceMonitor" in result.stdout
    assert "CRD schemas of prometheus-operator" in result.stdout
    assert "promtool check rules" in result.stdout and "SUCCESS: 10 rules found" in result.stdout
    assert "promtool test rules" in result.stdout  # helm/oubli/tests/*.test.yaml
    assert result.stdout.rstrip().endswith("helm-check: ok")


def _helm_check_validator() -> str:
    """The manifest validator embedded in scripts/helm-check (its first Python heredoc)."""
    script = (ROOT / "scripts" / "helm-check").read_text(encoding="utf-8")
    start = script.index("<<'EOF'\n") + len("<<'EOF'\n")
    return script[start:script.index("\nEOF\n", start)]


def test_helm_check_refuses_crd_objects_that_break_the_crds_schemas(helm: str, tmp_path: Path) -> None:
    """The CRD objects are checked against the CRDs' own schemas, strictly: a misspelt field, a string
    for an integer and a bad duration each fail (the CRDs are fetched by scripts/helm-check)."""
    crds = sorted((ROOT / ".cache" / "crds").glob("prometheus-operator-*/ok"))
    if not crds:
        _missing("no CRD schemas in .cache/crds: run scripts/helm-check")
    docs = render(helm, tmp_path, files=(ALL_ON,))
    one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["intervall"] = "30s"
    one(docs, "ScaledObject")["spec"]["pollingInterval"] = "15"
    one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-", "1.34.0", str(crds[-1].parent),
                             str(tmp_path / "rules"), str(tmp_path / "broken.yaml")], input=_helm_check_validator(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "ServiceMonitor/oubli-prod: CRD schema: spec.endpoints.0: Additional properties are not allowed " \
           "('intervall' was unexpected)" in result.stderr
    assert "ScaledObject/oubli-prod: CRD schema: spec.pollingInterval: '15' is not of type 'integer'" in result.stderr
    assert "PrometheusRule/oubli-prod: CRD schema: spec.groups.0.rules.0.for: '10 minutes' does not match" \
           in result.stderr
    assert "3 manifest(s) failed validation" in result.stderr


@pytest.mark.parametrize("files", [(), (ALL_ON,)], ids=["default", "all-on"])
def test_lint_strict_passes(helm: str, files: tuple[Path, ...]) -> None:
    args = [a for f in files for a in ("--values", str(f))]
    result = _run(helm, "lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# --- the worker's Deployment -----------------------------------------------------------------------


def test_deployment_probes_ports_and_command(default_docs: list[dict[str, Any]]) -> None:
    deployment = one(default_docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["oubli"] and container["args"] == ["worker"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    service = one(default_docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_startup_probe_holds_liveness_off_until_the_worker_serves(default_docs: list[dict[str, Any]]) -> None:
    container = one(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The HTTP server starts after the store connects: minutes of a store failover, not 30 s of liveness.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] < 60


def test_deployment_follows_the_configured_http_port(all_on_docs: list[dict[str, Any]]) -> None:
    container = one(all_on_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 9102
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"


@pytest.mark.parametrize("docs_fixture", ["default_docs", "all_on_docs"])
def test_every_pod_is_locked_down(docs_fixture: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(docs_fixture)
    pods = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            pods.append(doc["spec"]["template"]["spec"])
        elif doc["kind"] == "CronJob":
            pods.append(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert len(pods) == (2 if docs_fixture == "default_docs" else 3)
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["command"] == ["oubli"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert set(container["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp


@pytest.mark.parametrize(("drain", "grace"), [(20, 35), (45.5, 61), (0, 15), (300, 315)])
def test_grace_period_outlasts_the_drain(helm: str, tmp_path: Path, drain: float, grace: int) -> None:
    docs = render(helm, tmp_path, {"config": {"worker": {"drain_seconds": drain}}})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    assert pod["terminationGracePeriodSeconds"] >= math.ceil(drain) + 15


def test_default_grace_period_exceeds_default_drain(default_docs: list[dict[str, Any]]) -> None:
    config = yaml.safe_load(one(default_docs, "ConfigMap", "oubli")["data"]["oubli.yaml"])
    grace = one(default_docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config["worker"]["drain_seconds"]


def test_explicit_grace_period_shorter_than_the_drain_is_refused(helm: str, tmp_path: Path) -> None:
    error = render_error(helm, tmp_path, {"terminationGracePeriodSeconds": 30,
                                          "config": {"worker": {"drain_seconds": 20}}})
    assert "terminationGracePeriodSeconds (30) must be at least config.worker.drain_seconds (20) + 15" in error
    docs = render(helm, tmp_path, {"terminationGracePeriodSeconds": 40, "config": {"worker": {"drain_seconds": 20}}})
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40


# --- the config, the secrets and what rolls the pods ------------------------------------------------------


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            pods[doc["kind"]] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            pods[doc["kind"]] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pods


CA_VALUES: dict[str, Any] = {
    "extraVolumes": [{"name": "private-ca", "configMap": {"name": "corp-ca-bundle"}},
                     {"name": "kafka-client", "secret": {"secretName": "kafka-client-tls"}}],
    "extraVolumeMounts": [{"name": "private-ca", "mountPath": "/etc/oubli-tls/ca", "readOnly": True},
                          {"name": "kafka-client", "mountPath": "/etc/oubli-tls/kafka", "readOnly": True}],
    "config": {"kafka": {"client": {"security.protocol": "SSL", "ssl.ca.location": "/etc/oubli-tls/ca/ca.crt",
                                    "ssl.certificate.location": "/etc/oubli-tls/kafka/tls.crt",
                                    "ssl.key.location": "/etc/oubli-tls/kafka/tls.key"}}},
    "retention": {"enabled": True},
}


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values as helm merges them: maps key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both_maps else value
    return merged


def test_a_private_ca_mounts_through_extra_volumes(helm: str, tmp_path: Path) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(_merged(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8")), CA_VALUES), schema)
    docs = render(helm, tmp_path, CA_VALUES)
    pods = _pods(docs)
    assert set(pods) == {"Deployment", "Job", "CronJob"}  # the migration and the sweep reach Kafka/PostgreSQL too
    for kind, pod in pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["private-ca"] == {"name": "private-ca", "configMap": {"name": "corp-ca-bundle"}}, kind
        assert volumes["kafka-client"]["secret"] == {"secretName": "kafka-client-tls"}, kind
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/etc/oubli-tls/ca"] == {"name": "private-ca", "mountPath": "/etc/oubli-tls/ca", "readOnly": True}
        assert mounts["/etc/oubli-tls/kafka"]["name"] == "kafka-client"
        assert {"/etc/oubli", "/tmp"} <= set(mounts), kind
    text = one(docs, "ConfigMap", "oubli")["data"]["oubli.yaml"]
    settings = oubli_config.build(yaml.safe_load(text), env={name: "x" for name in ENV_REF.findall(text)})
    assert settings.kafka.client["ssl.ca.location"] == "/etc/oubli-tls/ca/ca.crt"


@pytest.mark.parametrize("path", ["/etc/oubli/ca", "/etc/oubli", "/tmp/"])
def test_an_extra_mount_over_the_chart_s_own_is_refused(helm: str, tmp_path: Path, path: str) -> None:
    error = render_error(helm, tmp_path, {"extraVolumes": [{"name": "ca", "secret": {"secretName": "ca"}}],
                                          "extraVolumeMounts": [{"name": "ca", "mountPath": path}]})
    assert "is taken by the chart" in error


def test_changed_secret_references_roll_the_pods_and_reloader_watches_the_secrets(
        helm: str, tmp_path: Path, default_docs: list[dict[str, Any]], all_on_docs: list[dict[str, Any]]) -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        value: str = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/references"]
        return value

    moved = render(helm, tmp_path, {"secrets": {"envFrom": ["oubli-v2"]}})
    assert checksum(moved) != checksum(default_docs)
    assert "annotations" not in one(default_docs, "Deployment")["metadata"]  # Reloader is off by default
    watched = one(all_on_docs, "Deployment")["metadata"]["annotations"]["secret.reloader.stakater.com/reload"]
    assert watched.split(",") == sorted({"oubli-core", "kafka-users-oubli", "orders-db-readwrite", "newsletter-db",
                                         "google-oauth", "nosto", "kafka-client-tls"})


# --- the config and the secrets ------------------------------------------------------------------


@pytest.mark.parametrize("docs_fixture", ["default_docs", "all_on_docs"])
def test_configmap_holds_a_config_the_worker_accepts(docs_fixture: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(docs_fixture)
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == 2  # the worker's, and the migration hook's copy
    texts = {m["data"]["oubli.yaml"] for m in maps}
    assert len(texts) == 1
    text = texts.pop()
    env = {name: "postgresql+psycopg://u:p@db.example/db" if name.endswith("_URL") else f"value-of-{name}"
           for name in ENV_REF.findall(text)}
    assert "OUBLI_SUBJECT_KEY" in env
    settings = oubli_config.build(yaml.safe_load(text), env=env)
    assert settings.subject_key.get_secret_value() == "value-of-OUBLI_SUBJECT_KEY"
    assert settings.worker.http_host == "0.0.0.0"
    if docs_fixture == "all_on_docs":
        assert len(settings.systems) == 5
        assert settings.kafka.client["sasl.password"] == "value-of-KAFKA_PASSWORD"
    # Each connector takes its settings as the chart renders them: a key it does not read (a daily quota
    # under rate_limit, say) is refused at start, and the values must not ship one.
    context = ConnectorContext(now=lambda: datetime.now(UTC))
    for system_id, system in settings.systems.items():
        registry.build(system_id, system.connector, system.settings, context)


def test_secrets_are_only_referenced(all_on_docs: list[dict[str, Any]]) -> None:
    assert "Secret" not in kinds(all_on_docs)
    container = one(all_on_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "oubli-core"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "kafka-users-oubli", "key": "password"}}
    assert env["OUBLI_CONFIG"]["value"] == "/etc/oubli/oubli.yaml"
    assert env["OUBLI_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for name, variable in env.items():
        assert "value" not in variable or ENV_REF.search(variable["value"]) is None, name


def test_an_unprovided_env_reference_is_refused(helm: str, tmp_path: Path) -> None:
    error = render_error(helm, tmp_path, {"secrets": {"envFrom": [], "env": {
        "OUBLI_SUBJECT_KEY": {"name": "oubli", "key": "subject-key"}}}})
    assert "config references ${OUBLI_DB_PASSWORD} but no Secret provides it" in error


# --- hooks, KEDA, retention, PDB ----------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default_docs: list[dict[str, Any]]) -> None:
    job = one(default_docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["command"] == ["oubli"] and pod["containers"][0]["args"] == ["migrate"]
    # What the hook uses must exist before the release's own objects do: it is made by hooks too, first.
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    hook_config = one(default_docs, "ConfigMap", config_volume["configMap"]["name"])
    hook_account = one(default_docs, "ServiceAccount", pod["serviceAccountName"])
    weight = int(annotations["helm.sh/hook-weight"])
    for dependency in (hook_config, hook_account):
        assert dependency["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(dependency["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
    assert "annotations" not in one(default_docs, "ConfigMap", "oubli")["metadata"]


def test_keda_scaled_object_renders_only_when_enabled(helm: str, tmp_path: Path,
                                                      default_docs: list[dict[str, Any]]) -> None:
    assert "ScaledObject" not in kinds(default_docs)
    assert one(default_docs, "Deployment")["spec"]["replicas"] == 2

    docs = render(helm, tmp_path, {"keda": {"enabled": True, "lagThreshold": 25, "maxReplicaCount": 8}})
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 1 and scaled["spec"]["maxReplicaCount"] == 8
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "oubli-worker"  # config.kafka.group_id
    assert trigger["metadata"]["topic"] == "privacy.commands"  # config.kafka.topics.commands
    assert trigger["metadata"]["bootstrapServers"] == "kafka:9092"
    assert trigger["metadata"]["lagThreshold"] == "25"
    assert "authenticationRef" not in trigger
    # Scale-down is damped by the HPA's behavior: cooldownPeriod and activation only act at zero replicas.
    assert "cooldownPeriod" not in scaled["spec"] and "activationLagThreshold" not in trigger["metadata"]
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # KEDA owns the count

    docs = render(helm, tmp_path, {"keda": {"enabled": True, "consumerGroup": "g2", "topic": "t2",
                                            "authenticationRef": {"name": "kafka-auth"}}})
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert (trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]) == ("g2", "t2")
    assert trigger["authenticationRef"] == {"name": "kafka-auth", "kind": "TriggerAuthentication"}


def test_retention_cronjob_is_off_by_default_and_runs_oubli_sweep(helm: str, tmp_path: Path,
                                                                 default_docs: list[dict[str, Any]]) -> None:
    assert "CronJob" not in kinds(default_docs)
    docs = render(helm, tmp_path, {"retention": {"enabled": True, "schedule": "0 4 * * *"}})
    cron = one(docs, "CronJob")
    assert cron["spec"]["schedule"] == "0 4 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["oubli"] and container["args"] == ["sweep"]


def test_the_retention_rules_example_in_values_passes_the_schema_and_the_worker(helm: str, tmp_path: Path) -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("  #   retention:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #   "):
            break
        block.append(line.removeprefix("  #   "))
    rules = yaml.safe_load("\n".join(block))["retention"]["rules"]
    assert [r["name"] for r in rules] == ["inactive-accounts", "contact-messages", "expired-invoices"]
    systems = {name: {"connector": name, "settings": {"url": f"postgresql+psycopg://oubli:${{DB_PASSWORD}}@db/{name}"}}
               for name in ("orders_db", "loyalty", "contact_forms")}
    docs = render(helm, tmp_path, {"retention": {"enabled": True, "args": ["--dry-run"]},
                                   "config": {"systems": systems, "retention": {"rules": rules}}})
    container = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["sweep", "--dry-run"]
    text = one(docs, "ConfigMap", "oubli")["data"]["oubli.yaml"]
    settings = oubli_config.build(yaml.safe_load(text), env={name: "x" for name in ENV_REF.findall(text)})
    assert [r.name for r in settings.retention.rules] == [r["name"] for r in rules]
    error = render_error(helm, tmp_path, {"config": {"retention": {"rules": [{**rules[0], "period": {"year": 2}}]}}})
    assert "values don't meet the specifications of the schema" in error


def test_network_policy_is_off_by_default_and_opens_only_the_listed_ports(
        default_docs: list[dict[str, Any]], all_on_docs: list[dict[str, Any]]) -> None:
    assert "NetworkPolicy" not in kinds(default_docs)
    policy = one(all_on_docs, "NetworkPolicy")["spec"]
    # Every pod of the release: the migration Job and the sweep as well as the workers.
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "oubli",
                                                    "app.kubernetes.io/instance": "oubli"}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": 9102, "protocol": "TCP"}]  # config.worker.http_port
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    allowed = {(r["protocol"], r["port"]): sorted(p.get("ipBlock", {}).get("cidr", "dns") for p in rule["to"])
               for rule in policy["egress"] for r in rule["ports"]}
    assert allowed == {("UDP", 53): ["dns"], ("TCP", 53): ["dns"], ("TCP", 9093): ["10.20.0.0/16"],
                       ("TCP", 5432): ["10.30.0.0/16", "10.31.0.0/16"], ("TCP", 443): ["0.0.0.0/0"],
                       ("TCP", 3306): ["10.40.0.0/16"]}


def _notes(helm: str, tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` omits it and a dry-run install needs a
    cluster, so a copy of the chart renders it into a ConfigMap."""
    chart = tmp_path / f"notes-chart-{len(list(tmp_path.glob('notes-chart-*')))}"
    shutil.copytree(CHART, chart)
    templates = chart / "templates"
    notes = (templates / "NOTES.txt").read_text(encoding="utf-8")
    (templates / "_notes.tpl").write_text('{{- define "test.notes" }}' + notes + "{{- end }}", encoding="utf-8")
    (templates / "notes.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
                                          'data:\n  notes: {{ include "test.notes" . | quote }}\n', encoding="utf-8")
    result = _run(helm, "template", "oubli", str(chart), "--namespace", "privacy",
                  "--show-only", "templates/notes.yaml", *_values_args(tmp_path, values, ()))
    assert result.returncode == 0, result.stderr
    text: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return text


def test_notes_describe_the_sweep_and_the_alerts_scraping(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, {"retention": {"enabled": True, "args": ["--dry-run"]},
                                    "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://x/runbook.md"}})
    assert "runs `oubli sweep --dry-run`" in notes and "does not have" not in notes
    assert "Alerts: PrometheusRule oubli, scraped through ServiceMonitor oubli." in notes
    notes = _notes(helm, tmp_path, {"retention": {"enabled": True},
                                    "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://x/runbook.md"},
                                    "metrics": {"serviceMonitor": {"enabled": False}}})
    assert "It emits real erasure commands" in notes and "oubli sweep --dry-run" in notes
    assert "No ServiceMonitor is rendered" in notes


def test_pod_disruption_budget_selects_only_worker_pods(default_docs: list[dict[str, Any]],
                                                       all_on_docs: list[dict[str, Any]]) -> None:
    pdb = one(default_docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                           "selector": one(default_docs, "Deployment")["spec"]["selector"]}
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert one(all_on_docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


# --- values.schema.json ----------------------------------------------------------------------------


INVALID_VALUES = {
    "unknown top-level key": {"replicaCont": 3},
    "unknown config key": {"config": {"worker": {"drain_second": 20}}},
    "literal subject key": {"config": {"subject_key": "not-a-reference"}},
    "literal previous signing secret": {"config": {"previous_signing_secrets": ["old-secret"]}},
    "password in the store url": {"config": {"store_url": "postgresql+psycopg://oubli:hunter2@db/oubli"}},
    "literal kafka password": {"config": {"kafka": {"client": {"sasl.password": "hunter2"}}}},
    "auto commit": {"config": {"kafka": {"client": {"enable.auto.commit": "true"}}}},
    "literal nested connector secret": {"config": {"systems": {"google_analytics": {
        "connector": "google_analytics", "settings": {"oauth": {"client_secret": "abc"}}}}}},
    "bad system id": {"config": {"systems": {"Orders-DB": {"connector": "orders_db"}}}},
    "chart-owned http_host": {"config": {"worker": {"http_host": "127.0.0.1"}}},
    "keda scales to zero": {"keda": {"enabled": True, "minReplicaCount": 0}},
    "keda cooldown (inert above zero replicas)": {"keda": {"cooldownPeriod": 300}},
    "bad scale-down policy": {"keda": {"behavior": {"scaleDown": {"policies": [{"type": "Pod", "value": 1,
                                                                               "periodSeconds": 60}]}}}},
    "extra mount without a path": {"extraVolumeMounts": [{"name": "ca"}]},
    "extra volume named like the chart's": {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]},
    "network policy cidr without a prefix": {"networkPolicy": {"egress": {"kafka": {"cidrs": ["10.0.0.1"]}}}},
    "root user": {"securityContext": {"runAsUser": 0}},
    "no resource limits": {"resources": {"limits": None}},
    "small shutdown margin": {"shutdownMarginSeconds": 5},
    "string replica count": {"replicaCount": "two"},
    "secret reference without key": {"secrets": {"env": {"KAFKA_PASSWORD": {"name": "kafka"}}}},
}


@pytest.mark.parametrize("values", list(INVALID_VALUES.values()), ids=list(INVALID_VALUES))
def test_values_violating_the_schema_are_rejected(helm: str, tmp_path: Path, values: dict[str, Any]) -> None:
    error = render_error(helm, tmp_path, values)
    assert "values don't meet the specifications of the schema" in error


def test_schema_is_valid_and_accepts_the_shipped_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.validate(defaults, schema)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["config"]["additionalProperties"] is False


def test_the_chart_tests_wait_for_a_tool_build_in_progress(tmp_path: Path) -> None:
    lock, built = tmp_path / "helm.lock", tmp_path / "built"
    lock.touch()
    builder = subprocess.Popen(["flock", str(lock), "sh", "-c", f"sleep 1; touch {built}"])
    with lock.open("a") as probe:  # until the builder holds the lock
        while True:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            fcntl.flock(probe, fcntl.LOCK_UN)
            time.sleep(0.01)
    wait_for_tool_builds((lock, tmp_path / "absent.lock"), timeout=60)
    assert built.exists(), "returned while the build still held its lock"
    assert builder.wait(10) == 0
