"""Request ids, HTTP metrics and the access log (node.http.observe), on both paths."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from coordinator.registry import Registry
from node.app import build_app
from node.http.observe import request_id
from node.settings import NodeSettings
from tests.helpers import NodeProcess, PublishFn, corrupt

ROW = [0.5, -1.0, 2.0, None]
PREDICT = "/api/v1/models/{model_type}/predict"


@pytest.fixture
def client(registry: Registry, publish: PublishFn) -> Iterator[TestClient]:
    publish("churn", "1.0.0")
    settings = NodeSettings(registry=registry.root, node_id="n1", max_body_bytes=4096)
    with TestClient(build_app(settings)) as c:
        yield c


def http_samples(client: TestClient) -> dict[tuple[str, ...], float]:
    """`modelcache_http_requests_total` as {(route, method, status): count}."""
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "modelcache_http_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["route"], s.labels["method"], s.labels["status"])] = s.value
    return out


def seconds_count(client: TestClient, route: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == "modelcache_http_request_seconds_count" and s.labels["route"] == route:
                return s.value
    return 0.0


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/models/churn/predict", {"features": ROW}, 200),  # fast path
        ("POST", "/api/v1/models/churn/predict", {"features": [1]}, 422),  # fast path, error
        ("POST", "/api/v1/models/nope/predict", {"features": ROW}, 404),
        ("POST", "/v2/models/churn/infer", {"inputs": "x"}, 400),
        ("GET", "/healthz", None, 200),  # FastAPI
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/healthz", None, 405),
    ],
)
def test_a_client_request_id_is_echoed_on_every_answer(
    client: TestClient, method: str, path: str, body: object, status: int
) -> None:
    r = client.request(method, path, json=body, headers={"X-Request-ID": "abc-123.X_y"})
    assert r.status_code == status
    assert r.headers["x-request-id"] == "abc-123.X_y"
    assert r.headers["x-modelcache-node"] == "n1"
    generated = client.request(method, path, json=body)
    assert len(generated.headers["x-request-id"]) == 16
    assert (
        generated.headers["x-request-id"] != client.request(method, path, json=body).headers["x-request-id"]
    )


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "tab\tin", "", "é".encode("latin-1")])
def test_an_unsafe_request_id_is_replaced(client: TestClient, bad: str | bytes) -> None:
    raw = bad if isinstance(bad, bytes) else bad.encode()
    assert request_id(raw) not in (bad, raw.decode("latin-1"))
    r = client.post("/api/v1/models/churn/predict", json={"features": ROW}, headers={"X-Request-ID": bad})
    h = client.get("/healthz", headers={"X-Request-ID": bad})
    for answer in (r, h):
        rid = answer.headers["x-request-id"]
        assert rid not in (bad, raw.decode("latin-1"))
        assert len(rid) == 16 and all(c in string.hexdigits for c in rid)
    assert request_id(b"a" * 128) == "a" * 128


def test_http_metrics_count_a_known_sequence_by_route_template(client: TestClient) -> None:
    before = http_samples(client)
    for _ in range(3):
        client.post("/api/v1/models/churn/predict", json={"features": ROW})
    client.post("/api/v1/models/churn/predict", json={"features": [1, 2]})  # 422
    client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    client.get("/api/v1/models/churn/versions/1.0.0")
    client.get("/api/v1/models/churn/versions/9.9.9")  # 404 on a matched route
    client.get("/nowhere")  # 404, no route
    got = {k: v - before.get(k, 0) for k, v in http_samples(client).items()}
    got = {k: v for k, v in got.items() if v and k[0] != "/metrics"}
    assert got == {
        (PREDICT, "POST", "200"): 3,
        (PREDICT, "POST", "422"): 1,
        ("/api/v1/predict", "POST", "200"): 1,
        ("/api/v1/models/{model_type}/versions/{version}", "GET", "200"): 1,
        ("/api/v1/models/{model_type}/versions/{version}", "GET", "404"): 1,
        ("unmatched", "GET", "404"): 1,
    }
    assert seconds_count(client, PREDICT) == 4
    assert seconds_count(client, "unmatched") == 1


def test_random_paths_and_methods_keep_label_sets_bounded(client: TestClient) -> None:
    rng = random.Random(7)
    for _ in range(200):
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 8)))
            for _ in range(rng.randint(1, 4))
        )
        method = rng.choice(["GET", "POST", "PURGE", "BREW", "X" + str(rng.randint(0, 9999))])
        client.request(method, path)
    client.post("/api/v1/models/" + "x" * 30 + "/predict", json={"features": ROW})
    label_sets = http_samples(client)
    routes = {k[0] for k in label_sets}
    assert len(label_sets) <= 8, label_sets
    assert routes <= {"unmatched", "/metrics", PREDICT}, routes
    assert {k[1] for k in label_sets} <= {"GET", "POST", "other"}


def _access_lines(node: NodeProcess) -> tuple[list[dict], list[dict]]:
    node.stop()
    docs = [json.loads(line) for line in node.log.read_text().splitlines() if line.strip()]
    return [d for d in docs if d["logger"] == "modelcache.access"], docs


def test_access_log_of_a_real_node(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    corrupt(registry, publish("broken", "1.0"))
    node = node_process(
        registry.root, MODELCACHE_ACCESS_LOG="true", MODELCACHE_LOG_FORMAT="json", MODELCACHE_LOAD_RETRIES="1"
    )
    url = f"{node.url}/api/v1/models/churn/predict"
    first = httpx.post(url, json={"features": ROW}, headers={"X-Request-ID": "req-1"})
    second = httpx.post(url, json={"features": ROW})
    batch = httpx.post(f"{node.url}/api/v1/models/churn/batch_predict", json={"instances": [ROW] * 3})
    v2 = httpx.post(
        f"{node.url}/v2/models/churn/infer",
        json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[0, 0, 0, 0]] * 2}]},
    )
    broken = httpx.post(
        f"{node.url}/api/v1/models/broken/predict", json={"features": ROW}, headers={"X-Request-ID": "req-b"}
    )
    invalid = httpx.post(url, json={"features": [1]}, headers={"X-Request-ID": "req-422"})
    missing = httpx.get(f"{node.url}/api/v1/models/churn/versions/7.0", headers={"X-Request-ID": "req-404"})
    assert [r.status_code for r in (first, second, batch, v2, broken, invalid, missing)] == [
        200, 200, 200, 200, 503, 422, 404
    ]  # fmt: skip
    access, docs = _access_lines(node)
    by_id = {d["request_id"]: d for d in access}
    line = by_id["req-1"]
    assert line["route"] == PREDICT and line["method"] == "POST" and line["status"] == 200
    assert line["model_type"] == "churn" and line["version"] == "1.0.0"
    assert line["cached"] is False and line["rows"] == 1 and line["duration_ms"] > 0
    assert by_id[second.headers["x-request-id"]]["cached"] is True
    assert by_id[batch.headers["x-request-id"]]["rows"] == 3
    assert by_id[batch.headers["x-request-id"]]["route"] == "/api/v1/models/{model_type}/batch_predict"
    v2_line = by_id[v2.headers["x-request-id"]]
    assert v2_line["route"] == "/v2/models/{name}/infer" and v2_line["rows"] == 2
    assert by_id["req-422"]["status"] == 422
    assert by_id["req-404"] == {
        **by_id["req-404"],
        "route": "/api/v1/models/{model_type}/versions/{version}",
        "method": "GET",
        "status": 404,
    }
    assert "model_type" not in by_id["req-404"]
    assert by_id["req-b"]["status"] == 503 and by_id["req-b"]["route"] == PREDICT
    assert all("churn/predict" not in d["message"] for d in access)  # templates, never raw paths
    # The request's other lines (the failed load's warning) carry its id too.
    assert any(d["logger"] != "modelcache.access" and d.get("request_id") == "req-b" for d in docs), docs


def test_no_access_log_by_default(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    node = node_process(registry.root, MODELCACHE_LOG_FORMAT="json")
    r = httpx.post(f"{node.url}/api/v1/models/churn/predict", json={"features": ROW})
    assert r.status_code == 200 and r.headers["x-request-id"]
    access, docs = _access_lines(node)
    assert access == [] and docs
