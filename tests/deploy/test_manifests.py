"""Containers and Kubernetes: validated against the compose specification and Kubernetes schemas."""

from __future__ import annotations

import json
from pathlib import Path

import check_jsonschema
import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_SCHEMA = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
K8S_VERSION = "1.30.0"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(compose(), schema)
    broken = compose()
    broken["services"]["redis"]["restart_policy"] = "always"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_has_the_whole_stack() -> None:
    doc = compose()
    services = doc["services"]
    assert {"redis", "demo-models", "node1", "node2", "node3", "lb", "prometheus", "grafana"} <= set(services)
    assert (
        "--appendonly" in services["redis"]["command"] and "redis-data:/data" in services["redis"]["volumes"]
    )
    for name in ("node1", "node2", "node3"):
        node = services[name]
        assert node["environment"]["MODELCACHE_REDIS_URL"] == "redis://redis:6379/0"
        assert "registry:/registry:ro" in node["volumes"]
        assert node["depends_on"]["demo-models"]["condition"] == "service_completed_successfully"
    assert services["demo-models"]["command"][0] == "demo-models"
    assert services["lb"]["image"].startswith("haproxy:")
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]
    assert services["lb"]["ports"] == ["8080:8080"]
    for mount in (
        *services["lb"]["volumes"],
        *services["prometheus"]["volumes"],
        *services["grafana"]["volumes"],
    ):
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), source
    assert {"registry", "redis-data"} <= set(doc["volumes"])


def k8s_documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.mark.parametrize(
    ("name", "doc"), k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_kubernetes_manifests_validate(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validation_catches_mistakes() -> None:
    deployment = by_name("Deployment", "modelcache-node")
    deployment = json.loads(json.dumps(deployment))
    deployment["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def by_name(kind: str, name: str) -> dict:
    [doc] = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kubernetes_node_deployment_is_production_shaped() -> None:
    kinds = {d["kind"]: d for _, d in k8s_documents()}
    assert {
        "Deployment",
        "Service",
        "StatefulSet",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    } <= set(kinds)
    pod = by_name("Deployment", "modelcache-node")["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and pod["spec"]["terminationGracePeriodSeconds"] >= 15
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    redis = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"] and kinds["StatefulSet"]["spec"]["volumeClaimTemplates"]


def test_dockerfile_is_slim_nonroot_cpu_only_with_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    # The image installs the project's own dependencies, which pick xgboost-cpu on Linux.
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert "xgboost-cpu>=2.1; sys_platform == 'linux'" in pyproject
    assert "nvidia" not in text.lower()


def test_kubernetes_traffic_goes_through_haproxy_to_each_node_pod() -> None:
    """Ingress -> HAProxy Service -> HAProxy, which resolves the pods from the headless Service."""
    ingress = by_name("Ingress", "modelcache")
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"]["name"] == "modelcache-lb"
    assert not any("hash" in key for key in ingress["metadata"].get("annotations", {}))
    lb = by_name("Deployment", "modelcache-lb")
    [container] = lb["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("haproxy:")
    [volume] = lb["spec"]["template"]["spec"]["volumes"]
    config = by_name("ConfigMap", volume["configMap"]["name"])
    cfg = config["data"]["haproxy.cfg"]
    assert "hash-balance-factor 125" in cfg
    pods = by_name("Service", "modelcache-node-pods")
    assert pods["spec"]["clusterIP"] == "None"
    assert f"{pods['metadata']['name']}.{pods['metadata']['namespace']}.svc.cluster.local:8000" in cfg
    assert by_name("Service", "modelcache-lb")["spec"]["selector"] == lb["spec"]["selector"]["matchLabels"]
