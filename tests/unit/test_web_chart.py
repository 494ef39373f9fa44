"""oubli web in the Helm chart: off by default; when on, its own locked-down Deployment running
``oubli web`` with probes, a Service, an Ingress for the public paths only, a ServiceMonitor and a
NetworkPolicy for its port (helm/oubli/ci/web-values.yaml, which scripts/helm-check also validates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_helm import CHART, ENV_REF, helm, one, render  # noqa: F401 - helm is a fixture
from worker import config as oubli_config

WEB_VALUES = CHART / "ci" / "web-values.yaml"


@pytest.fixture(scope="module")
def web_docs(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:  # noqa: F811
    return render(helm, tmp_path_factory.mktemp("web"), files=(WEB_VALUES,))


def web(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return one(docs, kind, "oubli-web")


def test_web_is_off_by_default(helm: str, tmp_path: Path) -> None:  # noqa: F811
    docs = render(helm, tmp_path)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-web")]


def test_the_web_deployment_runs_oubli_web_locked_down_with_probes(web_docs: list[dict[str, Any]]) -> None:
    pod = web(web_docs, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["oubli"] and container["args"] == ["web", "--port", "8000"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]
    assert pod["automountServiceAccountToken"] is False
    # The workers keep their own Deployment, PDB and metrics Service selectors.
    worker = one(web_docs, "Deployment", "oubli")
    assert worker["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert web(web_docs, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "web"


def test_the_ingress_exposes_only_the_public_paths(web_docs: list[dict[str, Any]]) -> None:
    ingress = web(web_docs, "Ingress")["spec"]
    paths = [p["path"] for rule in ingress["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/facebook/data-deletion", "/status", "/static"]
    assert ingress["tls"] == [{"hosts": ["privacy.retailer.example"], "secretName": "privacy-retailer-tls"}]
    service = web(web_docs, "Service")["spec"]
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_only_the_listed_peers_reach_the_web_port_and_it_is_scraped(web_docs: list[dict[str, Any]]) -> None:
    policy = web(web_docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}] and len(rule["from"]) == 2
    monitor = web(web_docs, "ServiceMonitor")["spec"]
    assert monitor["endpoints"][0]["port"] == "http" and monitor["endpoints"][0]["path"] == "/metrics"


def test_the_config_with_a_web_section_is_one_oubli_accepts(web_docs: list[dict[str, Any]]) -> None:
    text = one(web_docs, "ConfigMap", "oubli")["data"]["oubli.yaml"]
    env = {name: f"value-of-{name}-0123456789" for name in ENV_REF.findall(text)}
    settings = oubli_config.build(yaml.safe_load(text), env=env)
    assert settings.web.facebook_app_secret is not None
    assert settings.web.support_proxy_header == "X-Auth-Request-Email" and settings.identity_system == "orders_db"
