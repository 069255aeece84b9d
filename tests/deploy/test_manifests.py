"""Containers and Kubernetes: validated against the compose specification and Kubernetes schemas."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import check_jsonschema
import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from node.settings import NodeSettings

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


KUSTOMIZATION = DEPLOY / "k8s" / "kustomization.yaml"


def k8s_documents() -> list[tuple[str, dict]]:
    """Every Kubernetes object in deploy/k8s (the kustomization is kustomize's, not the API's)."""
    return [
        (path.name, doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if path != KUSTOMIZATION
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


def image_repository(image: str) -> str:
    """`registry/name:tag` -> `registry/name` (a port in the registry is not a tag)."""
    return re.sub(r":[^:/]+$", "", image.split("@")[0])


def node_image_containers() -> list[tuple[str, dict]]:
    """(object name, container) for every container running the modelcache image."""
    found = []
    for _, doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        found += [(doc["metadata"]["name"], c) for c in spec.get("containers", [])]
    return [(name, c) for name, c in found if not c["image"].startswith(("haproxy:", "redis:"))]


def test_kustomization_lists_every_manifest_and_creates_the_namespace() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (DEPLOY / "k8s" / resource).is_file(), f"{resource} is listed but does not exist"
    manifests = {name for name, _ in k8s_documents()}
    assert set(resources) == manifests, f"not listed: {manifests - set(resources)}"
    [(ns_file, namespace)] = [(n, d) for n, d in k8s_documents() if d["kind"] == "Namespace"]
    assert ns_file in resources
    for name, doc in k8s_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], (name, doc["kind"])
    # Renaming the namespace here alone would break the HAProxy config and the scrape config.
    assert "namespace" not in kustomization


def test_kustomization_sets_the_node_image() -> None:
    [image] = yaml.safe_load(KUSTOMIZATION.read_text())["images"]
    containers = node_image_containers()
    assert {name for name, _ in containers} == {"modelcache-node", "modelcache-demo-models"}
    for name, container in containers:
        assert image_repository(container["image"]) == image["name"], name
    assert image["newName"] and image["newTag"]


def kustomize() -> list[str] | None:
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if binary := shutil.which("kubectl"):
        return [binary, "kustomize"]
    return None


def test_kustomize_renders_the_namespace_first_and_the_chosen_image(tmp_path: Path) -> None:
    """An overlay that sets the image, rendered by the real kustomize (kubectl's, offline)."""
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (the other kustomization tests still ran)")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "k8s", tmp_path)],
        "images": [{"name": "modelcache", "newName": "registry.example.com/modelcache", "newTag": "1.2.3"}],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs[0]["kind"] == "Namespace"
    assert len(docs) == len(k8s_documents())
    images = {
        d["metadata"]["name"]: c["image"]
        for d in docs
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    assert images["modelcache-node"] == "registry.example.com/modelcache:1.2.3"
    assert images["modelcache-demo-models"] == "registry.example.com/modelcache:1.2.3"
    assert images["modelcache-lb"].startswith("haproxy:")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


CONSTRAINTS = DEPLOY / "constraints.txt"
# The image's platform: markers in pyproject are evaluated as pip in python:3.11-slim would.
IMAGE_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "python_version": "3.11",
    "python_full_version": "3.11.9",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert m, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(m[1])
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = m[2]
    return pins


def image_requirements() -> list[Requirement]:
    """What the image installs: the project's dependencies and its sklearn extra, on Linux."""
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["sklearn"]]
    return [r for r in map(Requirement, specs) if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = constraints()
    requirements = image_requirements()
    assert "scikit-learn" in {canonicalize_name(r.name) for r in requirements}
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"


def dockerfile_commands() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    return [c.strip() for c in re.split(r"(?<!\\)\n", "\n".join(lines).replace("\\\n", " ")) if c.strip()]


def test_dockerfile_installs_the_pinned_versions_with_the_sklearn_extra() -> None:
    commands = dockerfile_commands()
    pip = [c for c in commands if c.startswith("RUN") and re.search(r"\bpip (wheel|install)\b", c)]
    assert pip, "the Dockerfile installs nothing with pip"
    # Where each stage has the constraints file (COPY deploy/constraints.txt <dest>).
    copies = {
        c.split()[-1].removeprefix("./")
        for c in commands
        if c.startswith("COPY") and c.split()[1] == "deploy/constraints.txt"
    }
    for command in pip:
        paths = re.findall(r"(?:-c|--constraint)[ =](\S+)", command)
        assert paths, f"installs without the constraints file: {command}"
        assert paths[0] in copies, f"{paths[0]} is not deploy/constraints.txt copied into the image"
        assert "[sklearn]" in command, f"installs without the sklearn extra: {command}"
    final = pip[-1]
    assert "--no-index" in final, "the runtime stage must install only the wheels built with the pins"


UVICORN_KEEP_ALIVE_S = NodeSettings().keep_alive_s
"""A node closes a connection idle this long (uvicorn's `timeout_keep_alive`)."""


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value)
    assert m, value
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 0.001}[m[2]]


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_haproxy_lets_idle_connections_go_before_the_node_closes_them(where: str) -> None:
    """Reusing a server connection uvicorn is closing fails the request (only small bodies are retried).

    HAProxy cannot cap an idle server connection's age: every pool-purge-delay it closes half
    of the idle connections beyond its estimated need. A delay well under the node's
    keep-alive makes the race rare; the node's keep-alive belongs above HAProxy's idle times.
    """
    if where == "compose":
        cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    else:
        cfg = by_name("ConfigMap", "modelcache-lb")["data"]["haproxy.cfg"]
    [purge] = re.findall(r"pool-purge-delay (\S+)", cfg)
    [client] = re.findall(r"timeout http-keep-alive (\S+)", cfg)
    assert seconds(purge) <= UVICORN_KEEP_ALIVE_S / 2
    assert seconds(client) < UVICORN_KEEP_ALIVE_S
    assert not re.search(r"http-reuse (aggressive|always)", cfg), "first requests would ride old connections"
    assert "empty-response" in re.findall(r"retry-on (.*)", cfg)[0]
