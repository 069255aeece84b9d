"""The prediction fast path (node/http/fast.py): its own limits, errors and headers, and the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn

ROW = [0.5, -1.0, 2.0, None]
V1 = "/api/v1/models/churn/predict"
V2 = "/v2/models/churn/infer"
JSON = {"Content-Type": "application/json"}


def v2_body(rows: list[list[float | None]]) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}


@pytest.fixture
def settings(registry: Registry, publish: PublishFn) -> NodeSettings:
    publish("churn", "1.0.0")
    return NodeSettings(registry=registry.root, max_body_bytes=4096, max_batch=50, node_id="n1")


@pytest.fixture
def client(settings: NodeSettings) -> Iterator[TestClient]:
    with TestClient(build_app(settings)) as c:
        yield c


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json().keys() == {"error", "code"} and r.json()["code"] == code, r.text
    assert r.headers["x-modelcache-node"] == "n1"
    return r.json()["error"]


def test_predictions_bypass_the_fastapi_stack(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_a: object) -> None:
        raise AssertionError("FastAPI's stack was entered")

    monkeypatch.setattr(FastAPI, "__call__", broken)
    for path, body in ((V1, {"features": ROW}), (V2, v2_body([ROW]))):
        r = client.post(path, json=body)
        assert r.status_code == 200 and r.headers["x-modelcache-node"] == "n1"
        assert r.headers["x-modelcache-version"] == "1.0.0"
    with pytest.raises(AssertionError):
        client.get("/healthz")


@pytest.mark.parametrize("path", [V1, "/api/v1/batch_predict", V2, "/v2/models/churn/versions/1.0.0/infer"])
def test_413_on_content_length_and_on_a_streamed_body(client: TestClient, path: str) -> None:
    big = b"{" + b" " * 5000 + b"}"
    message = assert_error(client.post(path, content=big, headers=JSON), 413, "body_too_large")
    assert "4096 bytes" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(50):
            yield b" " * 100

    assert_error(client.post(path, content=chunks(), headers=JSON), 413, "body_too_large")


def test_invalid_json_and_wrong_types(client: TestClient) -> None:
    assert "not valid JSON" in assert_error(
        client.post(V1, content=b"{nope", headers=JSON), 422, "invalid_input"
    )
    assert "not valid JSON" in assert_error(
        client.post(V2, content=b"{nope", headers=JSON), 400, "bad_tensor"
    )
    message = assert_error(client.post(V1, json={"features": "1,2,3,4"}), 422, "invalid_input")
    assert message.startswith("invalid request: features")
    message = assert_error(client.post(V1, json={"features": ROW, "version": 1}), 422, "invalid_input")
    assert "version" in message
    assert_error(client.post(V2, json={"inputs": "x"}), 400, "bad_tensor")
    assert_error(
        client.post(V1, content=b"{}", headers={"Content-Type": "text/csv"}), 415, "unsupported_media_type"
    )
    gzip = {**JSON, "Content-Encoding": "gzip"}
    assert_error(client.post(V2, content=b"\x1f\x8b", headers=gzip), 415, "unsupported_media_type")


def test_known_errors_carry_the_node_header(client: TestClient) -> None:
    assert_error(client.post("/api/v1/models/nope/predict", json={"features": ROW}), 404, "model_not_found")
    assert_error(client.post("/v2/models/nope/infer", json=v2_body([ROW])), 404, "model_not_found")
    assert_error(client.post(V1, json={"features": [1.0]}), 422, "invalid_input")
    rows = {"instances": [ROW] * 51}
    assert_error(client.post("/api/v1/models/churn/batch_predict", json=rows), 413, "batch_too_large")


@pytest.mark.parametrize("path", [V1, "/api/v1/batch_predict", V2])
def test_unexpected_exception_on_the_fast_path_is_a_500_without_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom at /srv/secret/place")

    monkeypatch.setattr(client.app.state.service, "get", broken)
    body = {"model_type": "churn", "instances": [ROW]} if "batch" in path else {"features": ROW}
    r = client.post(path, json=v2_body([ROW]) if path == V2 else body)
    message = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "boom" not in message
    assert "boom at /srv/secret/place" in caplog.text and "Traceback" in caplog.text


def test_concurrent_requests_share_predict_calls_and_get_their_own_answers(settings: NodeSettings) -> None:
    registry = CollectorRegistry()
    app = build_app(settings, registry)
    rng = np.random.default_rng(3)
    rows = [[round(float(v), 3) for v in rng.normal(size=4)] for _ in range(40)]

    async def run() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
            alone_v1 = [(await c.post(V1, json={"features": r})).json() for r in rows]
            alone_v2 = [(await c.post(V2, json=v2_body([r]))).json() for r in rows]
            calls_before = app.state.batcher.calls
            together_v1 = await asyncio.gather(*(c.post(V1, json={"features": r}) for r in rows))
            together_v2 = await asyncio.gather(*(c.post(V2, json=v2_body([r])) for r in rows))
            assert app.state.batcher.calls < calls_before + 2 * len(rows)  # some calls were shared
            return alone_v1, alone_v2, [r.json() for r in together_v1], [r.json() for r in together_v2]

    try:
        alone_v1, alone_v2, together_v1, together_v2 = asyncio.run(run())
    finally:
        app.state.batcher.close()
    assert [a["probability"] for a in alone_v1] == [t["probability"] for t in together_v1]
    assert [a["outputs"] for a in alone_v2] == [t["outputs"] for t in together_v2]
    count = registry.get_sample_value("modelcache_batch_rows_count", {"model_type": "churn"})
    total = registry.get_sample_value("modelcache_batch_rows_sum", {"model_type": "churn"})
    assert count is not None and total == 4 * len(rows) and count < total  # batches of more than 1 row
    one_row = registry.get_sample_value("modelcache_batch_rows_bucket", {"model_type": "churn", "le": "1.0"})
    assert one_row is not None and one_row < count
    # Every request is still one observation of the per-request metrics.
    assert registry.get_sample_value(
        "modelcache_predict_seconds_count", {"model_type": "churn", "version": "1.0.0"}
    ) == 4 * len(rows)


def test_docs_list_the_predict_routes_with_their_request_schemas(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    bodies = {
        "/api/v1/predict": "PredictRequest",
        "/api/v1/batch_predict": "BatchRequest",
        "/api/v1/models/{model_type}/predict": "PredictBody",
        "/api/v1/models/{model_type}/batch_predict": "BatchBody",
    }
    for path, schema in bodies.items():
        op = spec["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{schema}" and schema in spec["components"]["schemas"]
        assert op["description"] and {"200", "404", "413", "422", "503"} <= set(op["responses"])
        assert [p["name"] for p in op.get("parameters", [])] == (["model_type"] if "{" in path else [])
    for path, params in (
        ("/v2/models/{name}/infer", ["name"]),
        ("/v2/models/{name}/versions/{version}/infer", ["name", "version"]),
    ):
        op = spec["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["example"]["inputs"]
        assert [p["name"] for p in op["parameters"]] == params and op["description"]
