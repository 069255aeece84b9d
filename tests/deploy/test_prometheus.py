"""promtool: the scrape configs, the rules, and a unit test for every alert."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.helpers import require_binary

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
INSTALL = "apt-get install prometheus (Debian) or put promtool on PATH"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", INSTALL)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_compose_config_checks() -> None:
    out = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_config_checks(tmp_path: Path) -> None:
    out = promtool("check", "config", str(PROM / "prometheus-k8s.yml"))
    if "field kubernetes_sd_configs not found" in out.stdout + out.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check everything else
        # (rules, relabelling) with the discovery block swapped for a static one.
        doc = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
        for job in doc["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["pod:8000"]}]
        doc["rule_files"] = [str(PROM / f) for f in doc["rule_files"]]
        (tmp_path / "k8s.yml").write_text(yaml.safe_dump(doc))
        out = promtool("check", "config", str(tmp_path / "k8s.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_check() -> None:
    out = promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_that_passes() -> None:
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    cases = [(c["alertname"], bool(c["exp_alerts"])) for t in tests for c in t.get("alert_rule_test", [])]
    for alert in alerts:
        assert (alert, True) in cases, f"{alert} has no firing case"
        assert (alert, False) in cases or any(
            c["alertname"] == alert and not c["exp_alerts"] for t in tests for c in t["alert_rule_test"]
        ), f"{alert} has no silent case"
    out = promtool("test", "rules", str(PROM / "tests" / "alerts_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_links_a_runbook_section() -> None:
    runbook = (PROM / "RUNBOOK.md").read_text()
    for group in yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook_url"].split("#")[1]
            assert f"## {rule['alert']}" in runbook and anchor == rule["alert"].lower()
