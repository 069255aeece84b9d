"""The Grafana dashboard against a real Prometheus scraping three real nodes with traffic.

Every panel query of the dashboard, with its template variables substituted the way
Grafana would (from the variables' own label_values queries), must be valid PromQL and
return data. A panel that shows "No data" fails the test.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from coordinator.registry import Registry
from coordinator.state import ClusterState
from tests.helpers import NodeProcess, PublishFn, corrupt, eventually, free_port, require_binary, stop_process

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "modelcache.json"
ROW = [0.1, 0.2, 0.3, 0.4]


def test_dashboard_json_is_built_from_its_script() -> None:
    built = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "build_dashboard.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(built) == json.loads(DASHBOARD.read_text()), (
        "run: python deploy/grafana/build_dashboard.py > deploy/grafana/dashboards/modelcache.json"
    )


def test_dashboard_covers_cache_health() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    memory = next(p for p in dashboard["panels"] if p["title"] == "Cache bytes")
    exprs = " ".join(t["expr"] for t in memory["targets"])
    assert "process_resident_memory_bytes" in exprs and "modelcache_cache_max_bytes" in exprs
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Cluster hit rate",
        "Hit rate per node",
        "Misses per second",
        "Evictions per second",
        "Cached models vs capacity",
        "Cache bytes",
        "Model load latency",
        "Load failures and fallbacks",
        "Throughput by model (rows/s)",
        "Predict latency by model",
        "Reload events",
        "Reload propagation latency",
        "Redis connectivity per node",
        "What each node has cached",
        "Canary: requests and errors by version",
        "Canary share per node",
    ):
        assert wanted in titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["node", "model_type"]
    provisioning = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert provisioning["datasources"][0]["uid"] == dashboard["panels"][1]["datasource"]["uid"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    binary = require_binary("prometheus", "apt-get install prometheus (Debian)")
    procs: list[subprocess.Popen[bytes]] = []

    def _start(targets: list[str]) -> str:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))],
            "scrape_configs": [{"job_name": "modelcache", "static_configs": [{"targets": targets}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        assert eventually(lambda: _ready(url), timeout=30), (tmp_path / "prometheus.log").read_text()[-2000:]
        return url

    yield _start
    for proc in procs:
        stop_process(proc)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expr: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]["result"]


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


def test_every_panel_query_returns_data(
    cluster: Callable[..., list[NodeProcess]],
    prometheus: Callable[[list[str]], str],
    registry: Registry,
    publish: PublishFn,
    state: ClusterState,
) -> None:
    for model in ("a", "b", "c", "d"):
        publish(model, "1.0")
    publish("a", "0.9")
    nodes = cluster(3, MODELCACHE_CACHE_SIZE="2")
    prom = prometheus([f"127.0.0.1:{n.port}" for n in nodes])

    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as c:
            for i in range(20000):  # bounded, stopped below
                if stop.is_set():
                    return
                model = "abcd"[i % 4] if i % 3 else "a"
                c.post(f"{nodes[i % 3].url}/api/v1/models/{model}/predict", json={"features": ROW})
                time.sleep(0.002)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        # Rare events (reloads, load failures) must happen after the first scrapes to show as rates.
        assert eventually(lambda: len(query(prom, 'up{job="modelcache"} == 1')) == 3, timeout=30)
        time.sleep(2)
        # Real events for the cluster panels: a reload and a corrupt version that falls back.
        state.wait_for_acks(state.reload(None, None, registry), timeout_s=10)
        corrupt(registry, publish("b", "2.0"))
        state.wait_for_acks(state.reload("b", None, registry), timeout_s=10)
        for n in nodes:
            httpx.post(f"{n.url}/api/v1/models/b/predict", json={"features": ROW}, timeout=10)
        httpx.post(
            f"{nodes[0].url}/v2/repository/models/b/unload",
            timeout=10,
            headers={"Authorization": "Bearer cluster-token"},
        )
        httpx.post(f"{nodes[0].url}/api/v1/models/b/predict", json={"features": ROW}, timeout=10)
        # A canary for the canary panels: half of a's default traffic to 0.9, and input it refuses.
        state.wait_for_acks(state.canary("a", "0.9", 50, registry), timeout_s=10)
        for n in nodes:
            for _ in range(4):
                httpx.post(f"{n.url}/api/v1/models/a/predict", json={"features": ROW[:2]}, timeout=10)

        assert eventually(
            lambda: has_data(query(prom, "cluster:modelcache_cache_hit_ratio:rate1m")), timeout=30
        )

        dashboard = json.loads(DASHBOARD.read_text())

        def variable_values() -> dict[str, str]:
            """Each variable's label_values query, evaluated as Grafana refreshes it."""
            values = {}
            for variable in dashboard["templating"]["list"]:
                metric, label = re.fullmatch(
                    r"label_values\((\w+), (\w+)\)", variable["query"]["query"]
                ).groups()
                found = sorted({s["metric"][label] for s in query(prom, metric)})
                assert found, f"variable {variable['name']} has no values"
                # As Grafana does for Prometheus: regex-escape, then escape for the PromQL string.
                escaped = (re.escape(v).replace("\\", "\\\\") for v in found)
                values[variable["name"]] = "(" + "|".join(escaped) + ")"
            return values

        assert variable_values()["node"].count("|") == 2
        exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 15

        everything = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"]}

        def substituted(expr: str, chosen: dict[str, str]) -> str:
            for name, value in chosen.items():
                expr = expr.replace(f"${name}", value)
            assert "$" not in expr.replace("$__", ""), expr
            return expr

        def all_have_data() -> list[str]:
            # Both ways Grafana fills the variables: "All" (the default) and every value selected.
            values = variable_values()
            return [
                f"{title} ({label})"
                for title, expr in exprs
                for label, chosen in (("All", everything), ("each value", values))
                if not has_data(query(prom, substituted(expr, chosen)))
            ]

        deadline = time.monotonic() + 30
        while (empty := all_have_data()) and time.monotonic() < deadline:
            time.sleep(1)
        assert empty == [], f"panels without data: {empty}"
        table = query(
            prom, substituted(next(e for t, e in exprs if t == "What each node has cached"), everything)
        )
        assert {s["metric"]["instance"] for s in table} == {f"127.0.0.1:{n.port}" for n in nodes}
        rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {g["name"] for g in rules} == {"modelcache-recording", "modelcache-slo", "modelcache-alerts"}
        assert all(r["health"] == "ok" for g in rules for r in g["rules"])
    finally:
        stop.set()
        thread.join(30)
