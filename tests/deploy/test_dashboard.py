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

from coordinator.control import Control
from coordinator.membership import Membership
from coordinator.registry import Registry
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


def test_dashboard_covers_cache_health_and_http() -> None:
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
        "Estimated hit ratio with a larger cache",
        "Predictions within 250 ms (objective: 99%)",
        "Requests per second by route and status",
        "5xx ratio per node",
        "HTTP latency by route",
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
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "node", "model_type"]


def datasource_refs(node: object) -> Iterator[object]:
    """Every `datasource` value anywhere in the dashboard JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_dashboard_imports_into_any_grafana() -> None:
    """No datasource uid of ours: queries go to the `datasource` variable; no short fixed rate window."""
    dashboard = json.loads(DASHBOARD.read_text())
    variable = dashboard["templating"]["list"][0]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    refs = list(datasource_refs(dashboard["panels"])) + list(
        datasource_refs(dashboard["templating"]["list"][1:])
    )
    assert refs and all(ref == {"type": "prometheus", "uid": "${datasource}"} for ref in refs), refs
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    windows = [w for e in exprs for w in re.findall(r"\[([^\]]+)\]", e)]
    assert "$__rate_interval" in windows
    # A window shorter than 4 scrape intervals is empty at a 60 s scrape: $__rate_interval, or >= 5m.
    assert all(w == "$__rate_interval" or re.fullmatch(r"([5-9]|\d\d+)m|\d+h", w) for w in windows), windows


def schema_problems(dashboard: dict) -> list[str]:
    """Where the dashboard departs from Grafana's dashboard schema (the Foundation SDK's generated model).

    The SDK decodes exactly the fields the schema defines: a field it drops or rewrites is
    one Grafana does not know. Enumerated fields (variable, cursor-sync and panel types)
    are checked against the schema's enums.
    """
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as schema

    # Written by Grafana's own editor, not in the schema: the variable's query as text.
    allowed = {"definition"}
    decoded = json.loads(json.dumps(schema.Dashboard.from_json(dashboard), cls=JSONEncoder))
    problems: list[str] = []

    def compare(ours: object, theirs: object, path: str) -> None:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for key, value in ours.items():
                if key not in theirs:
                    if key not in allowed:
                        problems.append(f"{path}/{key}: not in the schema")
                else:
                    compare(value, theirs[key], f"{path}/{key}")
        elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                compare(a, b, f"{path}[{i}]")
        elif ours != theirs:
            problems.append(f"{path}: {ours!r} decodes as {theirs!r}")

    compare(dashboard, decoded, "")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] not in {t.value for t in schema.VariableType}:
            problems.append(f"variable {variable['name']}: type {variable['type']!r}")
    for panel in dashboard["panels"]:
        if not isinstance(panel.get("id"), int) or set(panel["gridPos"]) != {"x", "y", "w", "h"}:
            problems.append(f"panel {panel.get('title')}: id or gridPos")
        if panel["gridPos"]["x"] + panel["gridPos"]["w"] > 24:
            problems.append(f"panel {panel['title']}: wider than the 24-column grid")
    return problems


def test_dashboard_follows_grafanas_dashboard_schema() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert schema_problems(dashboard) == []
    # The check catches what Grafana would not read: a misspelt field, an unknown variable type.
    broken = json.loads(DASHBOARD.read_text())
    broken["panels"][1]["gridPoss"] = broken["panels"][1].pop("gridPos") | {}
    broken["panels"][1]["gridPos"] = {"x": 0, "y": 0, "w": 6, "h": 5}
    broken["templating"]["list"][1]["type"] = "querry"
    assert len(schema_problems(broken)) == 2


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
    control: Control,
    members: Membership,
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
        members.wait_for_acks(control.reload(None), timeout_s=10)
        corrupt(registry, publish("b", "2.0"))
        members.wait_for_acks(control.reload("b", None), timeout_s=10)
        for n in nodes:
            httpx.post(f"{n.url}/api/v1/models/b/predict", json={"features": ROW}, timeout=10)
        httpx.post(
            f"{nodes[0].url}/v2/repository/models/b/unload",
            timeout=10,
            headers={"Authorization": "Bearer cluster-token"},
        )
        httpx.post(f"{nodes[0].url}/api/v1/models/b/predict", json={"features": ROW}, timeout=10)
        # A canary for the canary panels: half of a's default traffic to 0.9, and input it refuses.
        members.wait_for_acks(control.canary("a", "0.9", 50), timeout_s=10)
        for n in nodes:
            for _ in range(4):
                httpx.post(f"{n.url}/api/v1/models/a/predict", json={"features": ROW[:2]}, timeout=10)

        assert eventually(
            lambda: has_data(query(prom, "cluster:modelcache_cache_hit_ratio:rate1m")), timeout=30
        )

        dashboard = json.loads(DASHBOARD.read_text())

        # The variables that filter series; `datasource` picks the Prometheus (this one).
        filters = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]

        def variable_values() -> dict[str, str]:
            """Each variable's label_values query, evaluated as Grafana refreshes it.

            Over the dashboard's time range (refresh 2: on time range change), with the label
            values API: per-model series come and go with the cache, so the values are the
            model types seen in the last hour, not only those exported at this instant.
            """
            values = {}
            for variable in filters:
                metric, label = re.fullmatch(
                    r"label_values\((\w+), (\w+)\)", variable["query"]["query"]
                ).groups()
                r = httpx.get(
                    f"{prom}/api/v1/label/{label}/values",
                    params={"match[]": metric, "start": time.time() - 3600, "end": time.time()},
                    timeout=10,
                )
                assert r.status_code == 200, r.text
                found = sorted(r.json()["data"])
                assert found, f"variable {variable['name']} has no values"
                # As Grafana does for Prometheus: regex-escape, then escape for the PromQL string.
                escaped = (re.escape(v).replace("\\", "\\\\") for v in found)
                values[variable["name"]] = "(" + "|".join(escaped) + ")"
            return values

        assert variable_values()["node"].count("|") == 2
        exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 15

        everything = {v["name"]: v["allValue"] for v in filters}
        # Panels that are empty until a node exports their series (the hit-ratio curve estimate
        # comes with the cache's curve work): their queries must still succeed.
        optional = {
            "Estimated hit ratio with a larger cache": "modelcache_cache_hit_ratio_estimate",
        }
        exported = httpx.get(f"{nodes[0].url}/metrics", timeout=10).text
        expected_empty = {title for title, metric in optional.items() if metric not in exported}

        def substituted(expr: str, chosen: dict[str, str]) -> str:
            for name, value in chosen.items():
                expr = expr.replace(f"${name}", value)
            # Grafana's $__rate_interval: at least 4 scrape intervals (1 s here).
            expr = expr.replace("$__rate_interval", "4s")
            assert "$" not in expr, expr
            return expr

        def all_have_data() -> list[str]:
            # Both ways Grafana fills the variables: "All" (the default) and every value selected.
            values = variable_values()
            return [
                f"{title} ({label})"
                for title, expr in exprs
                for label, chosen in (("All", everything), ("each value", values))
                if not has_data(query(prom, substituted(expr, chosen))) and title not in expected_empty
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
