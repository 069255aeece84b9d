"""deploy/k8s/monitoring: the Prometheus Operator objects (a kustomize component).

Checked against the operator's CRD schemas (cloudcoil's models, generated from them), the
PrometheusRule against the rule files it is generated from and promtool, and the
PodMonitor against the node pods the real kustomize renders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule
from pydantic import BaseModel, ValidationError

from tests.helpers import require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MONITORING = DEPLOY / "k8s" / "monitoring"
RULES = DEPLOY / "prometheus" / "rules"


def load(name: str) -> dict:
    return yaml.safe_load((MONITORING / name).read_text())


def schema_problems(model: type[BaseModel], doc: dict) -> list[str]:
    """What the CRD schema refuses or does not know in `doc` (an unknown field is dropped on decoding)."""
    try:
        decoded = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return [] if decoded == doc else [f"fields the schema does not know: {doc} decodes as {decoded}"]


def test_the_objects_follow_the_operators_crd_schemas() -> None:
    assert schema_problems(PodMonitor, load("podmonitor.yaml")) == []
    assert schema_problems(PrometheusRule, load("prometheusrule.yaml")) == []
    # The check catches a misspelt field and a value the CRD's pattern refuses.
    misspelt = load("podmonitor.yaml")
    misspelt["spec"]["podMetricEndpoints"] = misspelt["spec"].pop("podMetricsEndpoints")
    assert schema_problems(PodMonitor, misspelt)
    bad_interval = load("podmonitor.yaml")
    bad_interval["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert schema_problems(PodMonitor, bad_interval)


def test_the_prometheusrule_is_the_rule_files() -> None:
    """One source of truth: the PrometheusRule's groups are the rule files' groups, unchanged."""
    groups = [
        g
        for name in ("recording.yml", "alerts.yml")
        for g in yaml.safe_load((RULES / name).read_text())["groups"]
    ]
    assert load("prometheusrule.yaml")["spec"]["groups"] == groups
    assert {p.name for p in RULES.glob("*.yml")} == {"recording.yml", "alerts.yml"}, "a new rule file: add it"
    built = subprocess.run(
        [sys.executable, str(MONITORING / "build_prometheusrule.py"), "--check"],
        capture_output=True,
        timeout=60,
    )
    assert built.returncode == 0, "run: python deploy/k8s/monitoring/build_prometheusrule.py"


def test_promtool_accepts_the_prometheusrule(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus (Debian) or put promtool on PATH")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": load("prometheusrule.yaml")["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def kustomize() -> list[str] | None:
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if binary := shutil.which("kubectl"):
        return [binary, "kustomize"]
    return None


def test_an_overlay_with_the_component_scrapes_the_node_pods(tmp_path: Path) -> None:
    """Rendered by the real kustomize: the PodMonitor selects the node pods, by a port they name."""
    command = kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (the schema tests still ran)")
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert set(component["resources"]) == {p.name for p in MONITORING.glob("*.yaml")} - {"kustomization.yaml"}
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "k8s", tmp_path)],
        "components": [os.path.relpath(MONITORING, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert any(d["kind"] == "PrometheusRule" for d in docs)
    selector = monitor["spec"]["selector"]["matchLabels"]
    namespaces = monitor["spec"]["namespaceSelector"]["matchNames"]
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    selected = [
        d
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
        and selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
    ]
    assert [d["metadata"]["name"] for d in selected] == ["modelcache-node"]
    node = selected[0]
    assert node["metadata"]["namespace"] in namespaces
    container_ports = {
        p.get("name") for c in node["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
    }
    assert ports <= container_ports
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["podMetricsEndpoints"])
