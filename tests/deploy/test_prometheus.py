"""promtool: the scrape configs, the rules, and a unit test for every alert."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.helpers import eventually, free_port, require_binary, stop_process

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


RUNBOOK_URL = re.compile(r"^\{\{ \$externalLabels\.runbook_base \}\}/RUNBOOK\.md#(?P<anchor>[a-z0-9-]+)$")


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def heading_anchors(markdown: str) -> dict[str, str]:
    """Section title -> the anchor GitHub (and GitLab) give it."""
    anchors = {}
    for line in markdown.splitlines():
        if m := re.match(r"^#{1,6} (.+?)\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            anchors[m.group(1)] = slug
    return anchors


def test_every_alert_links_its_runbook_section_by_an_absolute_url() -> None:
    anchors = heading_anchors((PROM / "RUNBOOK.md").read_text())
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        m = RUNBOOK_URL.match(url)
        assert m, f"{rule['alert']}: runbook_url {url!r} is not <runbook_base>/RUNBOOK.md#<anchor>"
        assert rule["alert"] in anchors, f"RUNBOOK.md has no section titled {rule['alert']}"
        assert m["anchor"] == anchors[rule["alert"]], f"{rule['alert']}: #{m['anchor']} is not its section"


def absolute_default(value: str) -> str:
    """The default of a compose `${VAR:-default}`, which must be an absolute http(s) URL."""
    m = re.fullmatch(r"\$\{MODELCACHE_RUNBOOK_BASE:-(?P<default>[^}]+)\}", value)
    assert m, value
    assert re.match(r"^https?://[^/]+/", m["default"]), m["default"]
    return m["default"]


def test_every_prometheus_config_sets_the_runbook_base() -> None:
    compose = yaml.safe_load((PROM.parent / "docker-compose.yml").read_text())["services"]["prometheus"]
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["global"]["external_labels"]["runbook_base"] == "${MODELCACHE_RUNBOOK_BASE}"
    assert "--enable-feature=expand-external-labels" in compose["command"]
    absolute_default(compose["environment"]["MODELCACHE_RUNBOOK_BASE"])
    k8s = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    assert re.match(r"^https?://[^/]+/", k8s["global"]["external_labels"]["runbook_base"])


def test_a_real_prometheus_renders_absolute_runbook_links(tmp_path: Path) -> None:
    """The compose config and flags, every alert forced to fire: each link is base/RUNBOOK.md#section."""
    binary = require_binary("prometheus", INSTALL)
    base = "https://runbooks.example.test/ops/modelcache"
    rules = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"], rule["for"] = "vector(1)", "0s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    config["scrape_configs"] = []
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    compose = yaml.safe_load((PROM.parent / "docker-compose.yml").read_text())["services"]["prometheus"]
    flags = [f for f in compose["command"] if f.startswith("--enable-feature")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                *flags,
            ],
            env={**os.environ, "MODELCACHE_RUNBOOK_BASE": base},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        names = {r["alert"] for r in alert_rules()}
        alerts: list[dict] = []

        def all_firing() -> bool:
            nonlocal alerts
            try:
                r = httpx.get(f"{url}/api/v1/alerts", timeout=2)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:  # 503 in plain text until Prometheus is ready
                return False
            alerts = r.json()["data"]["alerts"]
            return {a["labels"]["alertname"] for a in alerts} == names

        assert eventually(all_firing, timeout=30), (tmp_path / "prometheus.log").read_text()[-2000:]
        anchors = heading_anchors((PROM / "RUNBOOK.md").read_text())
        for alert in alerts:
            name = alert["labels"]["alertname"]
            assert alert["annotations"]["runbook_url"] == f"{base}/RUNBOOK.md#{anchors[name]}"
    finally:
        stop_process(proc)
