"""Helpers for tests/deploy/test_k8s_properties.py: render deploy/k8s with kustomize, and read it
the way Kubernetes would (Ingress path matching, HAProxy's public allow list, NetworkPolicy,
Pod Security "restricted")."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_manifests import kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPONENTS = ("redis-sentinel", "demo-models", "shared-volume", "admin-ingress")
NAMESPACE = "modelcache"
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

Objects = dict[tuple[str, str], dict]


def render(tmp_path: Path, *components: str) -> Objects:
    """The base plus `components`, through an overlay in tmp_path (as an operator would write it)."""
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, tmp_path)],
        "components": [os.path.relpath(K8S / c, tmp_path) for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(objects) == len(docs), "two objects share a kind and name"
    return objects


def pods(objects: Objects) -> Iterator[tuple[str, dict]]:
    """(workload name, pod template) for every workload in the modelcache namespace."""
    for (kind, name), doc in objects.items():
        if kind in POD_KINDS and doc["metadata"].get("namespace") == NAMESPACE:
            yield name, doc["spec"]["template"]


def containers(pod: dict) -> list[dict]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def container(objects: Objects, kind: str, name: str, container_name: str) -> dict:
    [found] = [
        c
        for c in objects[(kind, name)]["spec"]["template"]["spec"]["containers"]
        if c["name"] == container_name
    ]
    return found


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def secret_ref(var: dict) -> tuple[str, str] | None:
    ref = var.get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def ingress_matches(path_rule: dict, path: str) -> bool:
    """Kubernetes Ingress matching: Exact, or Prefix by whole path elements."""
    rule = path_rule["path"]
    if path_rule["pathType"] == "Exact":
        return path == rule
    assert path_rule["pathType"] == "Prefix", "ImplementationSpecific paths are controller-dependent"
    elements = rule.rstrip("/").split("/")
    return path.split("/")[: len(elements)] == elements


def haproxy_public_door(cfg: str) -> Callable[[str, str], bool]:
    """Whether the rendered HAProxy config's public door lets `method path` through.

    Reads the allow list (its ACLs) out of the config itself; tests/deploy/test_lb_doors.py
    runs the same rules in a real HAProxy.
    """
    acls: dict[str, list[str]] = {}
    for line in cfg.splitlines():
        m = re.match(r"\s*acl (\w+) (path_reg|method) (.*)", line)
        if m:
            acls[m[1]] = m[3].split()
    [rule] = [ln for ln in cfg.splitlines() if "set-var(txn.public)" in ln]
    groups = [g.split() for g in rule.split(" if ", 1)[1].split("||")]

    def allowed(method: str, path: str) -> bool:
        def holds(acl: str) -> bool:
            values = acls[acl]
            if acl.endswith("_call"):
                return method in values
            return any(re.search(v, path) for v in values)

        return any(all(holds(acl) for acl in group) for group in groups)

    return allowed


Peer = tuple[str, dict[str, str]]  # (namespace, pod labels)
NAMESPACE_LABELS = {
    NAMESPACE: {"kubernetes.io/metadata.name": NAMESPACE},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    "ingress-nginx": {"kubernetes.io/metadata.name": "ingress-nginx"},
}


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer: dict, source: Peer, policy_namespace: str) -> bool:
    namespace, labels = source
    if "ipBlock" in peer:
        return False  # pods are not matched by address here
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], NAMESPACE_LABELS[namespace]):
            return False
    elif namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), labels)


def allowed(objects: Objects, source: Peer, target: dict[str, str], port: int) -> bool:
    """Whether NetworkPolicy lets `source` open a TCP connection to a pod labelled `target` on `port`."""
    policies = [
        d
        for (kind, _), d in objects.items()
        if kind == "NetworkPolicy"
        and d["metadata"]["namespace"] == NAMESPACE
        and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])
        and selects(d["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            peers = rule.get("from")
            if peers is None or any(peer_matches(p, source, NAMESPACE) for p in peers):
                return True
    return False


def labels_of(objects: Objects, kind: str, name: str) -> dict[str, str]:
    return objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict) -> list[str]:
    """Pod Security Standards, "restricted" profile (and "baseline" under it), for one pod template.

    https://kubernetes.io/docs/concepts/security/pod-security-standards/
    """
    spec = pod["spec"]
    pod_ctx = spec.get("securityContext", {})
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds - ALLOWED_VOLUMES}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    for c in containers(pod):
        ctx = c.get("securityContext", {})
        where = f"container {c['name']}"
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as root")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccomp profile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{where}: hostPort")
    return problems
