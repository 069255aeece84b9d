"""What a platform team checks before accepting deploy/k8s, asserted on `kubectl kustomize` output.

Each test renders the base (and, where it says so, the optional components) with the real
kustomize and checks one property: no placeholder secret, Redis behind a password, a public
Ingress that carries inference and read-only routes only, NetworkPolicies, Pod Security
"restricted", resources and probes, two load balancers on one ring, and the registry.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from coordinator.lb import K8S_MAX_NODES, RUNTIME_API_TCP
from tests.deploy.k8s_checks import (
    COMPONENTS,
    K8S,
    NAMESPACE,
    ROOT,
    Objects,
    allowed,
    container,
    containers,
    env_of,
    haproxy_public_door,
    ingress_matches,
    labels_of,
    pods,
    render,
    restricted_violations,
    secret_ref,
    selects,
)
from tests.deploy.test_manifests import K8S_VERSION, kustomize


@pytest.fixture
def base(tmp_path: Path) -> Objects:
    return render(tmp_path)


@pytest.fixture
def everything(tmp_path: Path) -> Objects:
    """The base with every optional component (demo-models before shared-volume, as documented)."""
    assert COMPONENTS.index("demo-models") < COMPONENTS.index("shared-volume")
    assert {p.parent.name for p in K8S.glob("*/kustomization.yaml")} <= set(COMPONENTS) | {"monitoring"}
    # A monitoring component (another team's) is checked too once it exists: the namespace
    # enforces "restricted", so a pod of its that fails here would be refused by the cluster.
    monitoring = ("monitoring",) if (K8S / "monitoring" / "kustomization.yaml").is_file() else ()
    return render(tmp_path, *COMPONENTS, *monitoring)


# -- secrets ------------------------------------------------------------------------------------

OPERATOR_SECRETS = {("modelcache-admin", "token"), ("modelcache-redis", "password")}


def test_every_render_validates_against_the_kubernetes_schemas(everything: Objects) -> None:
    for doc in everything.values():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's CRDs: tests/deploy/test_monitoring.py checks them
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_no_secret_ships_and_workloads_read_only_the_operators_secrets(everything: Objects) -> None:
    assert not [key for key in everything if key[0] == "Secret"], "a Secret with a value ships in deploy/k8s"
    text = yaml.safe_dump(list(everything.values()))
    assert "change-me" not in text
    used = set()
    for name, pod in pods(everything):
        for c in containers(pod):
            for var in c.get("env", []):
                if ref := secret_ref(var):
                    used.add(ref)
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    # Optional: the object store may use web identity instead of keys.
                    assert source["secretRef"] == {"name": "modelcache-s3", "optional": True}, name
    assert used == OPERATOR_SECRETS


def test_readme_shows_how_to_create_and_rotate_the_secrets() -> None:
    readme = (ROOT / "README.md").read_text()
    for secret, key in OPERATOR_SECRETS:
        assert re.search(rf"create secret generic {secret} --from-literal={key}=", readme), secret
    section = readme.split("## Running on Kubernetes", 1)[1]
    assert "Rotating secrets" in section and "ACL SETUSER default" in section
    assert "rollout restart statefulset/modelcache-node" in section


# -- Redis --------------------------------------------------------------------------------------


def test_redis_requires_the_password_and_nodes_compose_their_url_from_it(base: Objects) -> None:
    redis = container(base, "StatefulSet", "modelcache-redis", "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert secret_ref(env_of(redis)["REDIS_PASSWORD"]) == ("modelcache-redis", "password")
    assert secret_ref(env_of(redis)["REDISCLI_AUTH"]) == ("modelcache-redis", "password")  # the probe
    node = container(base, "StatefulSet", "modelcache-node", "node")
    env = list(env_of(node))
    assert secret_ref(env_of(node)["REDIS_PASSWORD"]) == ("modelcache-redis", "password")
    url = env_of(node)["MODELCACHE_REDIS_URL"]["value"]
    assert url.startswith("redis://:$(REDIS_PASSWORD)@modelcache-redis:6379/")
    # Kubernetes expands $(VAR) only from variables listed before it.
    assert env.index("REDIS_PASSWORD") < env.index("MODELCACHE_REDIS_URL")
    assert "MODELCACHE_REDIS_URL" not in base[("ConfigMap", "modelcache-config")]["data"]


def test_each_load_balancer_has_a_placement_agent_that_alone_holds_the_redis_password(base: Objects) -> None:
    """The sidecar reaches HAProxy's runtime API on the pod's loopback and Redis with the Secret."""
    pod = base[("Deployment", "modelcache-lb")]["spec"]["template"]["spec"]
    agent = container(base, "Deployment", "modelcache-lb", "placement-agent")
    haproxy = container(base, "Deployment", "modelcache-lb", "haproxy")
    assert agent["image"] == container(base, "StatefulSet", "modelcache-node", "node")["image"]
    assert agent["args"][:3] == ["lb-agent", "--haproxy", RUNTIME_API_TCP]
    env = list(env_of(agent))
    assert secret_ref(env_of(agent)["REDIS_PASSWORD"]) == ("modelcache-redis", "password")
    assert env_of(agent)["MODELCACHE_REDIS_URL"]["value"].startswith(
        "redis://:$(REDIS_PASSWORD)@modelcache-redis:6379/"
    )
    assert env.index("REDIS_PASSWORD") < env.index("MODELCACHE_REDIS_URL")
    assert not any(secret_ref(v) for v in env_of(haproxy).values()) and "envFrom" not in haproxy
    assert pod["automountServiceAccountToken"] is False, "no Kubernetes API access: no RBAC"
    cfg = base[("ConfigMap", "modelcache-lb")]["data"]["haproxy.cfg"]
    assert f"stats socket ipv4@{RUNTIME_API_TCP} level admin" in cfg
    # One placement backend per pod name, each with its pod first and at most 4 to fail over to.
    placed = re.findall(r"^backend (place_node\d+)\n((?:    .*\n?)*)", cfg, re.M)
    assert len(placed) == K8S_MAX_NODES
    for name, body in placed:
        servers = re.findall(r"^\s*server (node\d+) ", body, re.M)
        assert servers[0] == name.removeprefix("place_") and 2 <= len(servers) <= 5, (name, servers)
        assert "balance first" in body


# -- the public Ingress -------------------------------------------------------------------------

INFERENCE_AND_READS = [
    ("POST", "/api/v1/predict"),
    ("POST", "/api/v1/batch_predict"),
    ("POST", "/api/v1/models/fraud/predict"),
    ("POST", "/api/v1/models/fraud/batch_predict"),
    ("POST", "/v2/models/fraud/infer"),
    ("POST", "/v2/models/fraud/versions/1.2.0/infer"),
    ("POST", "/v1/models/fraud:predict"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/models/fraud/versions/1.2.0"),
    ("GET", "/v2/models/fraud"),
    ("GET", "/v1/models/fraud"),
]
INSIDE_ONLY = [
    ("POST", "/api/v1/models/reload"),
    ("PUT", "/api/v1/pins/fraud"),
    ("DELETE", "/api/v1/pins/fraud"),
    ("PUT", "/api/v1/canaries/fraud"),
    ("POST", "/api/v1/canaries/fraud/promote"),
    ("POST", "/v2/repository/models/fraud/load"),
    ("GET", "/api/v1/cluster"),
    ("GET", "/api/v1/cache/stats"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]


def test_the_public_ingress_carries_inference_and_read_only_routes_only(base: Objects) -> None:
    """Ingress -> Service modelcache-lb -> HAProxy's public door, whose allow list refuses the rest."""
    [rule] = base[("Ingress", "modelcache")]["spec"]["rules"]
    paths = rule["http"]["paths"]
    lb_service = base[("Service", "modelcache-lb")]
    for p in paths:
        assert p["backend"]["service"] == {"name": "modelcache-lb", "port": {"name": "http"}}
    [port] = lb_service["spec"]["ports"]
    assert port["name"] == "http"
    # The Service's target is HAProxy's public bind, not the admin one.
    haproxy = container(base, "Deployment", "modelcache-lb", "haproxy")
    container_port = {p["name"]: p["containerPort"] for p in haproxy["ports"]}[port["targetPort"]]
    cfg = base[("ConfigMap", "modelcache-lb")]["data"]["haproxy.cfg"]
    binds = re.findall(r"^\s*bind :(\d+)", cfg, re.M)
    [admin_port] = re.findall(r"acl admin_door dst_port (\d+)", cfg)
    assert str(container_port) in binds and str(container_port) != admin_port
    public = haproxy_public_door(cfg)

    def reaches_a_node(method: str, path: str) -> bool:
        return any(ingress_matches(p, path) for p in paths) and public(method, path)

    for method, path in INFERENCE_AND_READS:
        assert reaches_a_node(method, path), f"{method} {path} should be public"
    for method, path in INSIDE_ONLY:
        assert not reaches_a_node(method, path), f"{method} {path} is reachable from the internet"
    # Nothing else exposes the load balancer or the nodes outside the cluster.
    for (kind, name), doc in base.items():
        if kind == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
    assert [k for k in base if k[0] == "Ingress"] == [("Ingress", "modelcache")]


def test_the_public_door_check_catches_an_admin_route_let_through(base: Objects) -> None:
    cfg = base[("ConfigMap", "modelcache-lb")]["data"]["haproxy.cfg"]
    assert not haproxy_public_door(cfg)("POST", "/api/v1/models/reload")
    widened = cfg.replace("^/api/v1/(predict|batch_predict)$", "^/api/v1/")
    assert haproxy_public_door(widened)("POST", "/api/v1/models/reload")


# -- NetworkPolicy ------------------------------------------------------------------------------


def test_network_policies_let_only_nodes_and_lb_agents_reach_redis_and_only_lb_and_prometheus_reach_nodes(
    base: Objects,
) -> None:
    node = labels_of(base, "StatefulSet", "modelcache-node")
    lb = labels_of(base, "Deployment", "modelcache-lb")
    redis = labels_of(base, "StatefulSet", "modelcache-redis")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app": "something-else"}
    here = NAMESPACE
    # Redis: the nodes, and the load balancer pods (their placement agent holds the password).
    assert allowed(base, (here, node), redis, 6379)
    assert allowed(base, (here, lb), redis, 6379)
    for who in [(here, stranger), (here, prometheus), ("ingress-nginx", stranger)]:
        assert not allowed(base, who, redis, 6379), who
    # Nodes: the load balancer and Prometheus (here or in `monitoring`), on the HTTP port only.
    for who in [(here, lb), (here, prometheus), ("monitoring", prometheus)]:
        assert allowed(base, who, node, 8000), who
    for who in [(here, stranger), (here, redis), ("ingress-nginx", stranger), ("monitoring", stranger)]:
        assert not allowed(base, who, node, 8000), who
    assert not allowed(base, (here, lb), node, 9000)
    # Load balancer: the public door from anywhere, the admin door from labelled pods only.
    assert allowed(base, ("ingress-nginx", stranger), lb, 8080)
    assert not allowed(base, ("ingress-nginx", stranger), lb, 8081)
    assert not allowed(base, (here, stranger), lb, 8081)
    assert allowed(base, (here, {"modelcache/admin-client": "true"}), lb, 8081)
    # Everything else in the namespace starts from deny.
    assert not allowed(base, (here, node), {"app": "new-thing"}, 1234)


def test_network_policy_check_catches_an_open_redis(base: Objects) -> None:
    opened = copy.deepcopy(base)
    del opened[("NetworkPolicy", "modelcache-default-deny")]
    del opened[("NetworkPolicy", "modelcache-redis")]
    redis = labels_of(base, "StatefulSet", "modelcache-redis")
    assert allowed(opened, (NAMESPACE, {"app": "something-else"}), redis, 6379)


def test_sentinel_component_keeps_redis_closed_to_all_but_nodes_lb_agents_and_its_own_pods(
    tmp_path: Path,
) -> None:
    objects = render(tmp_path, "redis-sentinel")
    names = ("modelcache-node", "modelcache-redis", "modelcache-redis-replica", "modelcache-sentinel")
    labels = {n: labels_of(objects, "StatefulSet", n) for n in names}
    labels["modelcache-lb"] = labels_of(objects, "Deployment", "modelcache-lb")
    stranger = {"app": "something-else"}
    for server in ("modelcache-redis", "modelcache-redis-replica"):
        for client in labels:
            if client != server:
                assert allowed(objects, (NAMESPACE, labels[client]), labels[server], 6379), (client, server)
        assert not allowed(objects, (NAMESPACE, stranger), labels[server], 6379)
    for client in ("modelcache-node", "modelcache-sentinel", "modelcache-lb"):
        assert allowed(objects, (NAMESPACE, labels[client]), labels["modelcache-sentinel"], 26379)
    assert not allowed(objects, (NAMESPACE, stranger), labels["modelcache-sentinel"], 26379)
    # The placement agent follows the nodes to the Sentinels.
    agent = container(objects, "Deployment", "modelcache-lb", "placement-agent")
    node = container(objects, "StatefulSet", "modelcache-node", "node")
    url = env_of(agent)["MODELCACHE_REDIS_URL"]["value"]
    assert url.startswith("redis+sentinel://") and url == env_of(node)["MODELCACHE_REDIS_URL"]["value"]


# -- Pod Security "restricted", resources, probes -----------------------------------------------


def test_every_pod_meets_pod_security_restricted(everything: Objects) -> None:
    checked = dict(pods(everything))
    assert {"modelcache-node", "modelcache-lb", "modelcache-redis", "modelcache-sentinel"} <= set(checked)
    assert "modelcache-demo-models" in checked and "modelcache-redis-replica" in checked
    for name, pod in checked.items():
        assert restricted_violations(pod) == [], name
        for c in containers(pod):
            assert c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, (name, c["name"])
    labels = everything[("Namespace", NAMESPACE)]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize(
    "break_it",
    [
        lambda pod: pod["spec"]["securityContext"].pop("seccompProfile"),
        lambda pod: pod["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        lambda pod: pod["spec"]["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        lambda pod: pod["spec"]["securityContext"].update(runAsNonRoot=False),
        lambda pod: pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    ],
    ids=["no-seccomp", "escalation", "capabilities", "root", "host-path"],
)
def test_the_restricted_check_catches_each_violation(
    base: Objects, break_it: Callable[[dict], object]
) -> None:
    pod = copy.deepcopy(base[("StatefulSet", "modelcache-node")]["spec"]["template"])
    assert restricted_violations(pod) == []
    break_it(pod)
    assert restricted_violations(pod)


def test_every_container_has_requests_and_a_memory_limit(everything: Objects) -> None:
    for name, pod in pods(everything):
        for c in containers(pod):
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), (name, c["name"])
            assert "memory" in resources.get("limits", {}), (name, c["name"])


def test_nodes_have_readiness_and_liveness_probes(base: Objects) -> None:
    node = container(base, "StatefulSet", "modelcache-node", "node")
    assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert node["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name, pod in pods(base):
        for c in pod["spec"]["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, (name, c["name"])


# -- load balancer: replicas, disruption budgets, discovery -------------------------------------


def test_two_load_balancers_and_disruption_budgets_for_nodes_and_load_balancers(base: Objects) -> None:
    lb = base[("Deployment", "modelcache-lb")]
    assert lb["spec"]["replicas"] >= 2
    budgets = [d for (kind, _), d in base.items() if kind == "PodDisruptionBudget"]
    for workload in (lb, base[("StatefulSet", "modelcache-node")]):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(selects(b["spec"]["selector"], labels) for b in budgets), workload["metadata"]["name"]
    [lb_budget] = [
        b for b in budgets if selects(b["spec"]["selector"], lb["spec"]["template"]["metadata"]["labels"])
    ]
    # A drain may take one load balancer, never both.
    assert (
        lb_budget["spec"].get("minAvailable", 0) >= 1
        or lb_budget["spec"]["maxUnavailable"] < lb["spec"]["replicas"]
    )


def test_every_load_balancer_replica_builds_the_same_ring_with_room_beyond_the_autoscaler(
    base: Objects,
) -> None:
    """Servers are the node pods by their stable names in ordinal order (not DNS-order slots)."""
    nodes = base[("StatefulSet", "modelcache-node")]
    service = base[("Service", nodes["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= nodes["spec"]["template"]["metadata"]["labels"].items()
    hpa = base[("HorizontalPodAutoscaler", "modelcache-node")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "modelcache-node",
    }
    assert "replicas" not in nodes["spec"], "the autoscaler owns the replica count"
    cfg = base[("ConfigMap", "modelcache-lb")]["data"]["haproxy.cfg"]
    assert "server-template" not in cfg
    domain = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    backends = [
        b for b in re.split(r"^backend ", cfg, flags=re.M)[1:] if b.startswith(("nodes\n", "nodes_hot"))
    ]
    assert len(backends) == 2  # REST; the gRPC backend's ring: test_the_grpc_door_...
    lists = [re.findall(r"^\s*server (\S+) (\S+) resolvers dns", b, re.M) for b in backends]
    assert lists[0] == lists[1], "the hot and cold backends must list the same servers in the same order"
    hosts = [host for _, host in lists[0]]
    assert hosts == [f"modelcache-node-{k}.{domain}:8000" for k in range(len(hosts))]
    assert len(hosts) >= 4 * hpa["spec"]["maxReplicas"], "too few pod names for the autoscaler's maximum"


# -- registry and the demo ----------------------------------------------------------------------


def test_the_object_store_is_the_default_registry_and_the_demo_job_is_an_option(
    base: Objects, tmp_path: Path
) -> None:
    config = base[("ConfigMap", "modelcache-config")]["data"]
    assert config["MODELCACHE_REGISTRY"].startswith("s3://")
    assert not [k for k in base if k[0] in ("Job", "CronJob", "PersistentVolumeClaim")]
    node = base[("StatefulSet", "modelcache-node")]["spec"]["template"]["spec"]
    [c] = node["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in node["volumes"]}
    assert "emptyDir" in volumes[mounts[config["MODELCACHE_LOCAL_CACHE_DIR"]]]
    # Warm restart: its own emptyDir (outlives a container restart; the disk tier's byte budget
    # never touches it), and still no volume claims: the state is a hint, nodes stay stateless.
    state = mounts[config["MODELCACHE_STATE_DIR"]]
    assert "emptyDir" in volumes[state] and state != mounts[config["MODELCACHE_LOCAL_CACHE_DIR"]]
    assert "volumeClaimTemplates" not in base[("StatefulSet", "modelcache-node")]["spec"]

    (tmp_path / "shared").mkdir()
    shared = render(tmp_path / "shared", "demo-models", "shared-volume")
    [pvc] = [d for (kind, _), d in shared.items() if kind == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert shared[("ConfigMap", "modelcache-config")]["data"]["MODELCACHE_REGISTRY"] == "/registry"
    job = shared[("Job", "modelcache-demo-models")]["spec"]["template"]["spec"]
    node = shared[("StatefulSet", "modelcache-node")]["spec"]["template"]["spec"]
    for spec, read_only in ((node, True), (job, False)):
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/registry"]
        assert mount.get("readOnly", False) is read_only
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_the_readme_overlay_renders_with_its_image_bucket_and_identity(tmp_path: Path) -> None:
    """The overlay README.md tells operators to write, rendered from a copy beside the repository."""
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(r"```yaml\n# my-cluster/kustomization.yaml\n(.*?)```", readme, re.S)
    overlay = yaml.safe_load(block)
    assert overlay["resources"] == ["../deploy/k8s"]
    overlay["resources"] = [os.path.relpath(K8S, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    config = objects[("ConfigMap", "modelcache-config")]["data"]
    assert config["MODELCACHE_REGISTRY"].startswith("s3://") and config["MODELCACHE_CACHE_SIZE"]
    account = objects[("ServiceAccount", "modelcache-node")]["metadata"]["annotations"]
    assert "eks.amazonaws.com/role-arn" in account
    node = container(objects, "StatefulSet", "modelcache-node", "node")
    assert node["image"] == "registry.example.com/modelcache:0.1.0"


def test_the_optional_admin_entry_point_is_allowlisted_tls_and_reaches_the_admin_door(tmp_path: Path) -> None:
    objects = render(tmp_path, "admin-ingress")
    admin = objects[("Ingress", "modelcache-admin")]
    assert admin["metadata"]["annotations"]["nginx.ingress.kubernetes.io/whitelist-source-range"]
    [rule] = admin["spec"]["rules"]
    assert admin["spec"]["tls"][0]["hosts"] == [rule["host"]]
    for p in rule["http"]["paths"]:
        assert p["backend"]["service"] == {"name": "modelcache-lb-admin", "port": {"name": "admin"}}
    [port] = objects[("Service", "modelcache-lb-admin")]["spec"]["ports"]
    haproxy = container(objects, "Deployment", "modelcache-lb", "haproxy")
    assert {p["name"]: p["containerPort"] for p in haproxy["ports"]}[port["targetPort"]] == 8081
    lb = labels_of(objects, "Deployment", "modelcache-lb")
    controller = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    assert allowed(objects, controller, lb, 8081)
    assert not allowed(objects, ("monitoring", {}), lb, 8081)


# -- gRPC -----------------------------------------------------------------------------------------


def service_port(objects: Objects, name: str, port_name: str) -> dict:
    [port] = [p for p in objects[("Service", name)]["spec"]["ports"] if p["name"] == port_name]
    return port


def test_nodes_serve_grpc_on_8050_and_their_services_carry_it(base: Objects) -> None:
    node = container(base, "StatefulSet", "modelcache-node", "node")
    assert {p["name"]: p["containerPort"] for p in node["ports"]}["grpc"] == 8050
    assert base[("ConfigMap", "modelcache-config")]["data"]["MODELCACHE_GRPC_PORT"] == "8050"
    for service in ("modelcache-node-pods", "modelcache-node"):
        assert service_port(base, service, "grpc") == {"name": "grpc", "port": 8050, "targetPort": "grpc"}


def test_the_grpc_door_balances_every_node_pod_on_the_rest_ring_and_serves_public_methods_only(
    base: Objects,
) -> None:
    haproxy = container(base, "Deployment", "modelcache-lb", "haproxy")
    door = service_port(base, "modelcache-lb-grpc", "grpc")
    container_port = {p["name"]: p["containerPort"] for p in haproxy["ports"]}[door["targetPort"]]
    assert container_port == door["port"] == 8082
    assert base[("Service", "modelcache-lb-grpc")]["spec"].get("type", "ClusterIP") == "ClusterIP"
    cfg = base[("ConfigMap", "modelcache-lb")]["data"]["haproxy.cfg"]
    assert re.search(rf"^\s*bind :{container_port} proto h2$", cfg, re.M)
    backends = {b.split("\n", 1)[0]: b for b in re.split(r"^backend ", cfg, flags=re.M)[1:]}
    rest = re.findall(r"^\s*server (\S+) (\S+):8000 resolvers dns", backends["nodes"], re.M)
    grpc = re.findall(
        r"^\s*server (\S+) (\S+):8050 resolvers dns .* proto h2 track nodes/(\S+)$",
        backends["nodes_grpc"],
        re.M,
    )
    # The same pods in the same order (the same ring), each following its own REST health check.
    assert [(name, host, name) for name, host in rest] == grpc and len(grpc) >= 4
    assert "balance hdr(x-modelcache-model)" in backends["nodes_grpc"]
    [methods] = re.findall(r"acl public_method path (.*)$", cfg, re.M)
    served = {m.rsplit("/", 1)[1] for m in methods.split()}
    assert {"ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady"} <= served
    assert not served & {"RepositoryModelLoad", "RepositoryModelUnload"}
    assert "http-request return status 403" in cfg.split("frontend modelcache_grpc", 1)[1]


def test_network_policies_let_only_the_load_balancer_reach_node_grpc_and_anyone_the_grpc_door(
    base: Objects,
) -> None:
    node = labels_of(base, "StatefulSet", "modelcache-node")
    lb = labels_of(base, "Deployment", "modelcache-lb")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app": "something-else"}
    assert allowed(base, (NAMESPACE, lb), node, 8050)
    for who in [(NAMESPACE, prometheus), ("monitoring", prometheus), (NAMESPACE, stranger), ("x", stranger)]:
        assert not allowed(base, who, node, 8050), who
    assert allowed(base, ("ingress-nginx", stranger), lb, 8082)
    assert allowed(base, (NAMESPACE, stranger), lb, 8082)
