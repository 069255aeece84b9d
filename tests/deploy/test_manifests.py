"""Containers and Kubernetes: validated against the compose specification and Kubernetes schemas."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import check_jsonschema
import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from coordinator.processes import free_port, stop_process
from coordinator.redis_server import RedisServer, find_redis_server
from coordinator.redis_url import client_for, parse_redis_url
from node.settings import NodeSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_SCHEMA = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
K8S_VERSION = "1.30.0"


COMPOSE_PASSWORD = "${MODELCACHE_REDIS_PASSWORD:?set MODELCACHE_REDIS_PASSWORD}"
"""The Redis password in compose: from the environment, no default (compose refuses to start without)."""


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
        assert node["environment"]["MODELCACHE_REDIS_URL"] == f"redis://:{COMPOSE_PASSWORD}@redis:6379/0"
        assert "registry:/registry:ro" in node["volumes"]
        assert node["depends_on"]["demo-models"]["condition"] == "service_completed_successfully"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--requirepass") + 1] == COMPOSE_PASSWORD
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == COMPOSE_PASSWORD  # the healthcheck
    assert services["demo-models"]["command"][0] == "demo-models"
    assert services["lb"]["image"].startswith("haproxy:")
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]
    assert services["lb"]["ports"] == ["8080:8080", "8081:8081"]  # REST, gRPC
    for mount in (
        *services["lb"]["volumes"],
        *services["prometheus"]["volumes"],
        *services["grafana"]["volumes"],
    ):
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), source
    assert {"registry", "redis-data"} <= set(doc["volumes"])


def test_compose_runs_the_placement_agent_beside_haproxy_and_only_it_reaches_the_runtime_api() -> None:
    services = compose()["services"]
    agent = services["lb-agent"]
    assert agent["network_mode"] == "service:lb" and agent["command"][:3] == [
        "lb-agent",
        "--haproxy",
        "127.0.0.1:9999",
    ]
    assert agent["environment"]["MODELCACHE_REDIS_URL"] == f"redis://:{COMPOSE_PASSWORD}@redis:6379/0"
    assert agent["depends_on"]["redis"]["condition"] == "service_healthy"
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "stats socket ipv4@127.0.0.1:9999 level admin" in cfg, "loopback only: not on the compose network"
    assert "9999" not in " ".join(services["lb"]["ports"])


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
    deployment = by_name("StatefulSet", "modelcache-node")
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
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "NetworkPolicy",
    } <= set(kinds)
    # The operator creates the Secrets (README): none ships with a placeholder value.
    assert "Secret" not in kinds
    pod = by_name("StatefulSet", "modelcache-node")["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and pod["spec"]["terminationGracePeriodSeconds"] >= 15
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    redis_set = by_name("StatefulSet", "modelcache-redis")
    redis = redis_set["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"] and redis_set["spec"]["volumeClaimTemplates"]


def test_dockerfile_is_slim_nonroot_cpu_only_with_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    # The image installs the project's own dependencies, which pick xgboost-cpu on Linux.
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert "xgboost-cpu>=2.1; sys_platform == 'linux'" in pyproject
    assert "nvidia" not in text.lower()


def test_kubernetes_traffic_goes_through_haproxy_to_each_node_pod() -> None:
    """Ingress -> HAProxy Service -> HAProxy, which resolves the pods by name under the headless Service."""
    ingress = by_name("Ingress", "modelcache")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert paths and {p["backend"]["service"]["name"] for p in paths} == {"modelcache-lb"}
    assert not any("hash" in key for key in ingress["metadata"].get("annotations", {}))
    lb = by_name("Deployment", "modelcache-lb")
    [container] = [c for c in lb["spec"]["template"]["spec"]["containers"] if c["name"] == "haproxy"]
    assert container["image"].startswith("haproxy:")
    [volume] = [v for v in lb["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    config = by_name("ConfigMap", volume["configMap"]["name"])
    cfg = config["data"]["haproxy.cfg"]
    assert "hash-balance-factor 200" in cfg and "use_backend nodes_hot" in cfg  # hot models bounded
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
    # The nodes, and the load balancers' placement agent (coordinator/lbagent.py).
    assert {name for name, _ in containers} == {"modelcache-node", "modelcache-lb"}
    for name, container in containers:
        assert image_repository(container["image"]) == image["name"], name
    assert image["newName"] and image["newTag"]


def kustomize() -> list[str] | None:
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if binary := shutil.which("kubectl"):
        return [binary, "kustomize"]
    return None


DEMO_COMPONENT = DEPLOY / "k8s" / "demo-models"


def test_kustomize_renders_the_namespace_first_and_the_chosen_image(tmp_path: Path) -> None:
    """An overlay that sets the image, with the demo-models component, rendered by the real kustomize."""
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (the other kustomization tests still ran)")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "k8s", tmp_path)],
        "components": [os.path.relpath(DEMO_COMPONENT, tmp_path)],
        "images": [{"name": "modelcache", "newName": "registry.example.com/modelcache", "newTag": "1.2.3"}],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs[0]["kind"] == "Namespace"
    assert len(docs) == len(k8s_documents()) + 1  # the demo Job
    images = {
        (d["metadata"]["name"], c["name"]): c["image"]
        for d in docs
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    by_workload = {name: image for (name, _), image in images.items()}
    assert by_workload["modelcache-node"] == "registry.example.com/modelcache:1.2.3"
    assert by_workload["modelcache-demo-models"] == "registry.example.com/modelcache:1.2.3"
    assert images[("modelcache-lb", "haproxy")].startswith("haproxy:")
    assert images[("modelcache-lb", "placement-agent")] == "registry.example.com/modelcache:1.2.3"
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


def test_dockerfile_installs_the_pinned_versions_with_the_serving_extras() -> None:
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
        assert "[sklearn," in command, f"installs without the sklearn extra: {command}"
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
    purges = re.findall(r"pool-purge-delay (\S+)", cfg)  # one per backend (hot and cold)
    [client] = re.findall(r"timeout http-keep-alive (\S+)", cfg)
    assert purges and all(seconds(purge) <= UVICORN_KEEP_ALIVE_S / 2 for purge in purges)
    assert seconds(client) < UVICORN_KEEP_ALIVE_S
    assert not re.search(r"http-reuse (aggressive|always)", cfg), "first requests would ride old connections"
    assert "empty-response" in re.findall(r"retry-on (.*)", cfg)[0]


# -- optional Redis replica + Sentinel ----------------------------------------------------------

SENTINEL_OVERRIDE = DEPLOY / "docker-compose.sentinel.yml"
SENTINEL_COMPONENT = DEPLOY / "k8s" / "redis-sentinel"
SENTINEL_PORT = 26379
SENTINEL_AUTH_PASS = "sentinel auth-pass modelcache"
"""What each compose Sentinel appends to its config, followed by the password."""


def merge_compose(base: object, override: object, key: str = "") -> object:
    """`docker compose -f base -f override` for what these files use (the compose spec's merge rules).

    Mappings merge key by key; `command`, `entrypoint` and a healthcheck's `test` are
    replaced; other sequences (volumes, ports, ...) keep the base's entries and add new ones.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = merge_compose(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in ("command", "entrypoint", "test"):
        return base + [item for item in override if item not in base]
    return override


def sentinel_compose() -> dict:
    return merge_compose(compose(), yaml.safe_load(SENTINEL_OVERRIDE.read_text()))  # type: ignore[return-value]


def sentinel_directives(conf: str) -> list[list[str]]:
    return [line.split() for line in conf.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def check_sentinel_config(conf: str, url: str) -> tuple[str, int]:
    """The Sentinel config watches the master the URL names, by hostname; returns (host, port)."""
    target = parse_redis_url(url)
    assert target.is_sentinel, url
    lines = sentinel_directives(conf)
    [monitor] = [i for i, d in enumerate(lines) if d[:2] == ["sentinel", "monitor"]]
    _, _, master, host, port, quorum = lines[monitor]
    assert master == target.master, f"Sentinel monitors {master!r}, the URL names {target.master!r}"
    # Hostnames everywhere: without resolve-hostnames Sentinel refuses a hostname in `monitor`
    # ("Can't resolve instance hostname"); without announce-hostnames it hands clients IPs.
    assert ["sentinel", "resolve-hostnames", "yes"] in lines, "sentinel resolve-hostnames yes is missing"
    assert ["sentinel", "announce-hostnames", "yes"] in lines
    # A majority of the Sentinels the clients know is the quorum, and every setting is for this master.
    assert len(target.sentinels) // 2 < int(quorum) <= len(target.sentinels)
    for d in lines:
        if d[0] == "sentinel" and d[1] in ("down-after-milliseconds", "failover-timeout", "parallel-syncs"):
            assert d[2] == master, f"{d[1]} is set for {d[2]!r}, not the monitored {master!r}"
    settings = {d[1] for d in lines if d[0] == "sentinel"}
    assert {"down-after-milliseconds", "failover-timeout"} <= settings
    assert ["port", str(SENTINEL_PORT)] in lines
    return host, int(port)


def compose_sentinel_conf() -> str:
    return yaml.safe_load(SENTINEL_OVERRIDE.read_text())["configs"]["sentinel-conf"]["content"]


def test_sentinel_override_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(yaml.safe_load(SENTINEL_OVERRIDE.read_text()), schema)
    jsonschema.validate(sentinel_compose(), schema)
    broken = sentinel_compose()
    broken["services"]["sentinel-1"]["configs"] = [{"source": "sentinel-conf", "path": "/etc/x"}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_sentinel_override_adds_a_replica_and_three_sentinels_the_nodes_use() -> None:
    doc = sentinel_compose()
    services = doc["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    hosts = ",".join(f"{s}:{SENTINEL_PORT}" for s in sentinels)
    url = f"redis+sentinel://:{COMPOSE_PASSWORD}@{hosts}/modelcache/0"
    # As compose runs it: with the password interpolated (its `:?` message is no URL).
    host, port = check_sentinel_config(compose_sentinel_conf(), url.replace(COMPOSE_PASSWORD, "0123abcd"))
    # The monitored host is the primary: a service that replicates from no one, announcing its name.
    primary, replica = services[host]["command"], services["redis-replica"]["command"]
    assert "--replicaof" not in primary and "--appendonly" in primary
    assert replica[replica.index("--replicaof") + 1 :][:2] == [host, str(port)]
    for name in (host, "redis-replica"):
        command = services[name]["command"]
        assert command[command.index("--replica-announce-ip") + 1] == name
        for flag in ("--requirepass", "--masterauth"):
            assert command[command.index(flag) + 1] == COMPOSE_PASSWORD, (name, flag)
        assert services[name]["healthcheck"]["test"][-1] == "ping"
    assert "redis-replica-data:/data" in services["redis-replica"]["volumes"]
    assert {"redis-data", "redis-replica-data"} <= set(doc["volumes"])
    for name in sentinels:
        sentinel = services[name]
        assert sentinel["environment"]["SENTINEL_HOSTNAME"] == name
        [config] = sentinel["configs"]
        assert config["source"] in doc["configs"]
        script = sentinel["command"][-1]
        assert config["target"] in script and "--sentinel" in script
        assert "sentinel announce-ip $$SENTINEL_HOSTNAME" in script
        assert f'echo "{SENTINEL_AUTH_PASS} $$MODELCACHE_REDIS_PASSWORD"' in script
        assert sentinel["environment"]["MODELCACHE_REDIS_PASSWORD"] == COMPOSE_PASSWORD
    for name in ("node1", "node2", "node3"):
        node = services[name]
        assert node["environment"]["MODELCACHE_REDIS_URL"] == url
        # The base's other settings and dependencies survive the merge.
        assert node["environment"]["MODELCACHE_NODE_ID"] == name
        assert "MODELCACHE_ADMIN_TOKEN" in node["environment"]
        assert set(node["depends_on"]) == {"redis", "demo-models", *sentinels}
    # The base file is unchanged: plain Redis without the override.
    base_url = compose()["services"]["node1"]["environment"]["MODELCACHE_REDIS_URL"]
    assert base_url == f"redis://:{COMPOSE_PASSWORD}@redis:6379/0"


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda c: c.replace("monitor modelcache ", "monitor mymaster "), "the URL names 'modelcache'"),
        (lambda c: c.replace("failover-timeout modelcache", "failover-timeout other"), "not the monitored"),
        (lambda c: c.replace("sentinel resolve-hostnames yes\n", ""), "resolve-hostnames yes is missing"),
        (lambda c: c.replace(" 6379 2", " 6379 1"), "assert"),
    ],
    ids=["master-name", "setting-for-other-master", "no-resolve-hostnames", "quorum-of-one"],
)
def test_sentinel_config_check_catches_mistakes(edit: Callable[[str], str], why: str) -> None:
    url = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/modelcache/0"
    conf = compose_sentinel_conf()
    check_sentinel_config(conf, url)
    with pytest.raises(AssertionError, match=why):
        check_sentinel_config(edit(conf), url)


def sentinel_component_documents() -> list[tuple[str, dict]]:
    """The objects the component adds (its patches are checked in the rendered output)."""
    kustomization = yaml.safe_load((SENTINEL_COMPONENT / "kustomization.yaml").read_text())
    return [
        (name, doc)
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((SENTINEL_COMPONENT / name).read_text())
        if doc
    ]


@pytest.mark.parametrize(
    ("name", "doc"), sentinel_component_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_sentinel_component_manifests_validate(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"]["namespace"] == "modelcache"


def test_sentinel_component_lists_its_files() -> None:
    kustomization = yaml.safe_load((SENTINEL_COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    listed = {*kustomization["resources"], *(p["path"] for p in kustomization["patches"])}
    assert listed == {p.name for p in SENTINEL_COMPONENT.glob("*.yaml")} - {"kustomization.yaml"}


def render_with_sentinel(tmp_path: Path) -> list[dict]:
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (the component's manifests still validated)")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "k8s", tmp_path)],
        "components": [os.path.relpath(SENTINEL_COMPONENT, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_renders_the_sentinel_component(tmp_path: Path) -> None:
    docs = render_with_sentinel(tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert docs[0]["kind"] == "Namespace"
    assert len(docs) == len(k8s_documents()) + len(sentinel_component_documents())
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def fqdn(host: str) -> str:
        return f"{host}.modelcache.svc.cluster.local"

    def args(kind: str, name: str) -> list[str]:
        [container] = objects[(kind, name)]["spec"]["template"]["spec"]["containers"]
        return container["args"]

    # The nodes' URL lists every Sentinel pod by its name under the headless Service.
    sentinels = objects[("StatefulSet", "modelcache-sentinel")]
    service = objects[("Service", sentinels["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == sentinels["spec"]["selector"]["matchLabels"]
    [node] = objects[("StatefulSet", "modelcache-node")]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in node["env"]}
    url = env["MODELCACHE_REDIS_URL"]["value"]
    assert "MODELCACHE_REDIS_URL" not in objects[("ConfigMap", "modelcache-config")]["data"]
    pods = [f"modelcache-sentinel-{i}" for i in range(sentinels["spec"]["replicas"])]
    # The password comes from the Secret, through a variable defined before the URL.
    assert list(env).index("REDIS_PASSWORD") < list(env).index("MODELCACHE_REDIS_URL")
    password = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "modelcache-redis", "key": "password"}
    assert url == (
        "redis+sentinel://:$(REDIS_PASSWORD)@"
        + ",".join(f"{fqdn(pod + '.' + service['metadata']['name'])}:{SENTINEL_PORT}" for pod in pods)
        + "/modelcache/0"
    )
    # The Sentinels watch the primary by its Service, which selects the primary pod only.
    conf = objects[("ConfigMap", "modelcache-sentinel")]["data"]["sentinel.conf"]
    host, port = check_sentinel_config(conf, url)
    assert host == fqdn("modelcache-redis") and port == 6379
    primary, replica = (
        objects[("StatefulSet", "modelcache-redis")],
        objects[("StatefulSet", "modelcache-redis-replica")],
    )
    selector = objects[("Service", "modelcache-redis")]["spec"]["selector"]
    assert selector.items() <= primary["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= replica["spec"]["template"]["metadata"]["labels"].items()
    # Primary: the base's arguments plus the name it announces; replica: follows the primary.
    primary_args = args("StatefulSet", "modelcache-redis")
    assert (
        primary_args[: primary_args.index("--replica-announce-ip")]
        == by_name("StatefulSet", "modelcache-redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert primary_args[primary_args.index("--replica-announce-ip") + 1] == host
    assert "--replicaof" not in primary_args
    replica_args = args("StatefulSet", "modelcache-redis-replica")
    assert replica_args[replica_args.index("--replicaof") + 1 :][:2] == [host, str(port)]
    replica_service = objects[("Service", replica["spec"]["serviceName"])]
    assert replica_service["spec"]["clusterIP"] == "None"
    announce = replica_args[replica_args.index("--replica-announce-ip") + 1]
    assert announce == fqdn(f"$(POD_NAME).{replica_service['metadata']['name']}")
    [replica_container] = replica["spec"]["template"]["spec"]["containers"]
    assert {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in replica_container["env"]
    # Each Sentinel announces the name the URL lists for it.
    [init] = sentinels["spec"]["template"]["spec"]["initContainers"]
    assert f"sentinel announce-ip {fqdn('$POD_NAME.' + service['metadata']['name'])}" in init["command"][-1]
    assert {"configMapRef": {"name": "modelcache-config"}} in node["envFrom"]
    # Every Redis server requires the password and replicates with it; the Sentinels use it.
    for name in ("modelcache-redis", "modelcache-redis-replica"):
        server_args = args("StatefulSet", name)
        for flag in ("--requirepass", "--masterauth"):
            assert server_args[server_args.index(flag) + 1] == "$(REDIS_PASSWORD)", (name, flag)
    assert "sentinel auth-pass modelcache $REDIS_PASSWORD" in init["command"][-1]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "modelcache-redis"


# -- the compose Sentinel config, run for real on loopback ----------------------------------------


def localhost_sentinel_conf(conf: str, port: int, primary_port: int, work: Path, password: str) -> str:
    """The compose config with `localhost` for the service names, free ports, and quick timeouts.

    Everything else (hostname resolution and announcement, the master name, the quorum,
    parallel-syncs) is the file's own text; the lines the compose command appends follow.
    """
    out = []
    for d in sentinel_directives(conf):
        if d[0] == "port":
            d = ["port", str(port)]
        elif d[:2] == ["sentinel", "monitor"]:
            d = [*d[:3], "localhost", str(primary_port), d[5]]
        elif d[1:2] == ["down-after-milliseconds"]:
            d = [*d[:3], "500"]
        elif d[1:2] == ["failover-timeout"]:
            d = [*d[:3], "2000"]
        out.append(" ".join(d))
    appended = ["sentinel announce-ip localhost", f"{SENTINEL_AUTH_PASS} {password}"]
    return "\n".join([*out, "bind 127.0.0.1", f"dir {work}", *appended, ""])


def until(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def sentinel_process(template: str, primary_port: int, work: Path, password: str) -> Iterator[int]:
    """A Sentinel from the compose template, stopped by PID; yields its port."""
    port = free_port()
    work.mkdir()
    path = work / "sentinel.conf"
    path.write_text(localhost_sentinel_conf(template, port, primary_port, work, password))
    log = work / "sentinel.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [find_redis_server(), str(path), "--sentinel", "--loglevel", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            assert proc.poll() is None, f"sentinel exited: {log.read_text()}"
            with redis.Redis(port=port, socket_timeout=1) as c:
                return bool(c.ping())

        until(answers, f"sentinel on {port}", 10)
        yield port
    finally:
        stop_process(proc)


def test_compose_sentinel_config_runs_and_fails_over(tmp_path: Path) -> None:
    """A real primary, replica and three Sentinels from the compose config text; a real failover.

    With a password, as compose runs them: both servers require it and replicate with it,
    the Sentinels authenticate with it, and the nodes' URL carries it.
    """
    try:
        find_redis_server()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    template = compose_sentinel_conf()
    with contextlib.ExitStack() as stack:
        password = "0123abcd" * 4

        def server(*args: str) -> RedisServer:
            # requirepass after start: RedisServer's readiness PING carries no password.
            started = stack.enter_context(
                RedisServer(args=[*args, "--replica-announce-ip", "localhost", "--masterauth", password])
            )
            with redis.Redis(port=started.port) as c:
                c.config_set("requirepass", password)
            return started

        primary = server()
        replica = server("--replicaof", "localhost", str(primary.port))
        ports = [
            stack.enter_context(
                sentinel_process(template, primary.port, tmp_path / f"sentinel-{i}", password)
            )
            for i in range(3)
        ]
        url = f"redis+sentinel://:{password}@{','.join(f'localhost:{p}' for p in ports)}/modelcache/0"
        master = parse_redis_url(url).master

        def sentinels_see_the_group() -> bool:
            for p in ports:
                with redis.Redis(port=p, socket_timeout=1, decode_responses=True) as c:
                    if len(c.sentinel_slaves(master)) != 1 or len(c.sentinel_sentinels(master)) != 2:
                        return False
                    # Hostnames, not IPs, are what the Sentinels hand out.
                    assert c.sentinel_get_master_addr_by_name(master) == ("localhost", primary.port)
            return True

        until(sentinels_see_the_group, "three Sentinels that know the replica and each other")
        client = client_for(parse_redis_url(url), timeout=1.0, decode_responses=True)
        stack.callback(client.close)
        client.set("modelcache:test", "before")
        until(lambda: client.wait(1, 1000) == 1, "the replica to have the write")
        primary.stop()

        def promoted() -> bool:
            with redis.Redis(port=ports[0], socket_timeout=1, decode_responses=True) as c:
                return c.sentinel_get_master_addr_by_name(master) == ("localhost", replica.port)

        until(promoted, "the Sentinels to promote the replica")
        until(lambda: client.set("modelcache:test", "after"), "a write through the URL after the failover")
        assert client.get("modelcache:test") == "after"
        with redis.Redis(port=replica.port, password=password, decode_responses=True) as direct:
            assert direct.info("replication")["role"] == "master"


def test_redis_ha_doc_shows_the_compose_and_kubernetes_setups() -> None:
    doc = (DEPLOY.parent / "docs" / "redis-ha.md").read_text()
    services = sentinel_compose()["services"]
    assert services["node1"]["environment"]["MODELCACHE_REDIS_URL"] in doc
    assert "deploy/docker-compose.yml:deploy/docker-compose.sentinel.yml" in doc
    # The overlay the doc tells you to write, placed at the repository root, finds the base and component.
    [block] = re.findall(r"```yaml\n# my-overlay/kustomization.yaml\n(.*?)```", doc, re.S)
    overlay = yaml.safe_load(block)
    root = DEPLOY.parent / "my-overlay"
    assert [(root / p).resolve() for p in overlay["resources"]] == [DEPLOY / "k8s"]
    assert [(root / p).resolve() for p in overlay["components"]] == [SENTINEL_COMPONENT]
