"""Every route and every error code, in process (FastAPI's test client)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from coordinator.registry import Registry
from node.app import build_app, build_service
from node.http.app import create_app
from node.metrics import NodeMetrics
from node.settings import NodeSettings
from tests.helpers import FEATURES, PublishFn, corrupt, eventually

TOKEN = "s3cret-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROW = [0.5, -1.0, 2.0, None]


@pytest.fixture
def client(registry: Registry, publish: PublishFn) -> Iterator[TestClient]:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    publish("fraud", "1.0.0")
    settings = NodeSettings(
        registry=registry.root,
        admin_token=TOKEN,
        max_body_bytes=4096,
        max_batch=5,
        node_id="n1",
        load_retries=1,
    )
    with TestClient(build_app(settings)) as c:
        yield c


def test_predict(client: TestClient) -> None:
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    assert r.status_code == 200
    body = r.json()
    assert body["model_type"] == "churn" and body["version"] == "1.1.0" and body["node_id"] == "n1"
    assert body["prediction"] in (0, 1) and 0 <= body["probability"] <= 1
    assert body["cached"] is False
    assert r.headers["x-modelcache-version"] == "1.1.0"
    again = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}).json()
    assert again["cached"] is True and again["probability"] == body["probability"]


def test_predict_with_mapping_and_explicit_version(client: TestClient) -> None:
    features = dict(zip(FEATURES, ROW, strict=True))
    r = client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.0.0", "features": features})
    assert r.status_code == 200 and r.json()["version"] == "1.0.0"
    listed = client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.0.0", "features": ROW})
    assert listed.json()["probability"] == r.json()["probability"]


def test_model_in_path_routes(client: TestClient) -> None:
    r = client.post("/api/v1/models/fraud/predict", json={"features": ROW})
    assert r.status_code == 200 and r.json()["model_type"] == "fraud"
    r = client.post("/api/v1/models/fraud/batch_predict", json={"instances": [ROW, ROW]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_batch_predict(client: TestClient) -> None:
    r = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["predictions"]) == len(body["probabilities"]) == 5
    single = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}).json()
    assert body["probabilities"][0] == single["probability"]


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"model_type": "nope", "features": ROW}, 404, "model_not_found", "known model types: churn, fraud"),
        (
            {"model_type": "churn", "version": "9.0", "features": ROW},
            404,
            "version_not_found",
            "available versions: 1.0.0, 1.1.0",
        ),
        ({"model_type": "churn", "features": [1.0]}, 422, "invalid_input", "expected 4 features"),
        (
            {"model_type": "churn", "features": {"f0": 1, "bogus": 2}},
            422,
            "invalid_input",
            "unknown feature(s) bogus",
        ),
        (
            {"model_type": "churn", "features": [1, "x", 3, 4]},
            422,
            "invalid_input",
            "features.1: must be a number or null",
        ),
        ({"model_type": "churn", "features": [1, True, 3, 4]}, 422, "invalid_input", "must be a number"),
        ({"model_type": "churn"}, 422, "invalid_input", "features: Field required"),
        ({"model_type": "../etc", "features": ROW}, 422, "invalid_name", "invalid model type"),
        ({"model_type": "churn", "version": "latest!", "features": ROW}, 422, "invalid_name", "PEP 440"),
    ],
)
def test_predict_errors(client: TestClient, body: dict, status: int, code: str, fragment: str) -> None:
    r = client.post("/api/v1/predict", json=body)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert fragment in r.json()["error"]


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/api/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"


def test_body_too_large(client: TestClient) -> None:
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": [0.123456789] * 1000})
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large" and "4096 bytes" in r.json()["error"]


def test_chunked_body_too_large(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model_type": "churn", "features": ['
        for _ in range(2000):
            yield b"0.5,"
        yield b"0.5]}"

    r = client.post("/api/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_batch_too_large_and_empty(client: TestClient) -> None:
    r = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 6})
    assert r.status_code == 413 and r.json()["code"] == "batch_too_large"
    assert "limit of 5" in r.json()["error"]
    r = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": []})
    assert r.status_code == 422


def test_unloadable_explicit_version_is_503(client: TestClient, registry: Registry) -> None:
    corrupt(registry, registry.metadata("churn", "1.0.0"))
    r = client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.0.0", "features": ROW})
    assert r.status_code == 503
    assert r.json()["code"] == "checksum_mismatch" and "republish" in r.json()["error"]


def test_fallback_is_announced(client: TestClient, registry: Registry) -> None:
    corrupt(registry, registry.metadata("churn", "1.1.0"))
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    assert r.status_code == 200
    assert r.json()["version"] == "1.0.0" and r.json()["fallback_from"] == "1.1.0"
    assert r.headers["x-modelcache-fallback"] == "1.1.0 -> 1.0.0"


def test_models_listing_and_metadata(client: TestClient) -> None:
    client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    models = {m["model_type"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert models["churn"]["versions"] == ["1.0.0", "1.1.0"]
    assert models["churn"]["latest"] == "1.1.0" and models["churn"]["cached"] == ["1.1.0"]
    assert models["fraud"]["cached"] == []
    meta = client.get("/api/v1/models/fraud/versions/1.0.0").json()
    assert meta["features"] == list(FEATURES) and meta["cached_on_node"] is False
    assert len(meta["sha256"]) == 64
    assert client.get("/api/v1/cache/stats").json()["cached_models"] == 1  # metadata did not load
    assert client.get("/api/v1/models/fraud/versions/7.0").status_code == 404


def test_admin_auth(client: TestClient) -> None:
    body = {"scope": "node"}
    r = client.post("/api/v1/models/reload", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/v1/models/reload", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = client.post("/api/v1/models/reload", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ok"] is True


def test_admin_disabled_without_token(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    with TestClient(build_app(NodeSettings(registry=registry.root))) as c:
        r = c.post("/api/v1/models/reload", json={"scope": "node"}, headers=ADMIN)
        assert r.status_code == 403 and "MODELCACHE_ADMIN_TOKEN" in r.json()["error"]


def test_node_reload_swaps_to_new_version(client: TestClient, publish: PublishFn) -> None:
    client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    publish("churn", "1.2.0")
    r = client.post("/api/v1/models/reload", json={"model_type": "churn", "scope": "node"}, headers=ADMIN)
    [ack] = r.json()["acks"]
    assert (ack["node_id"], ack["outcome"], ack["version"], ack["previous"]) == ("n1", "ok", "1.2.0", "1.1.0")
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}).json()
    assert (r["version"], r["cached"]) == ("1.2.0", True)


def test_cluster_routes_without_redis_answer_501(client: TestClient) -> None:
    assert client.get("/api/v1/cluster").status_code == 501
    r = client.put("/api/v1/pins/churn", json={"version": "1.0.0"}, headers=ADMIN)
    assert r.status_code == 501 and "MODELCACHE_REDIS_URL" in r.json()["error"]
    assert client.delete("/api/v1/pins/churn", headers=ADMIN).status_code == 501
    r = client.post("/api/v1/models/reload", json={"scope": "cluster"}, headers=ADMIN)
    assert r.status_code == 501
    assert client.get("/api/v1/pins").json() == {"pins": {}}
    assert client.put("/api/v1/pins/churn", json={"version": "1.0.0"}).status_code == 401


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200


def test_readyz_waits_for_warmup(registry: Registry, publish: PublishFn) -> None:
    import threading

    from node.app import build_service
    from node.http.app import create_app
    from node.metrics import NodeMetrics

    publish("churn", "1.0.0")
    settings = NodeSettings(registry=registry.root)
    metrics = NodeMetrics()
    service = build_service(settings, metrics)
    release = threading.Event()

    def warmup() -> list[str]:
        release.wait(10)
        return service.warm(["churn"])

    with TestClient(create_app(settings, service, metrics, warmup=warmup)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "not_ready"
        release.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert c.get("/readyz").status_code == 200
        assert c.get("/api/v1/cache/stats").json()["cached_models"] == 1


def test_openapi_documents_every_route_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/predict",
        "/api/v1/batch_predict",
        "/api/v1/models/{model_type}/predict",
        "/api/v1/models",
        "/api/v1/models/{model_type}/versions/{version}",
        "/api/v1/models/reload",
        "/api/v1/pins",
        "/api/v1/pins/{model_type}",
        "/api/v1/cache/stats",
        "/api/v1/cluster",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
        for op in paths[path].values():
            assert op.get("description") or op.get("summary"), path
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["examples"]
    assert schemas["BatchRequest"]["examples"]
    assert "404" in paths["/api/v1/predict"]["post"]["responses"]


# -- no input reaches a 500 (issue 8 §3) ---------------------------------------------------------
def assert_error_shape(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code"} and isinstance(body["error"], str), body
    if code is not None:
        assert body["code"] == code, body
    return body


def test_unknown_route_and_wrong_method_answer_the_error_shape(client: TestClient) -> None:
    assert_error_shape(client.get("/api/v1/nope"), 404, "not_found")
    assert_error_shape(client.post("/v2/models/churn/nope", json={}), 404, "not_found")
    r = client.get("/api/v1/predict")
    assert_error_shape(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error_shape(client.delete("/healthz"), 405, "method_not_allowed")


def test_unexpected_exception_is_a_500_without_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom at /srv/secret/place")

    monkeypatch.setattr(client.app.state.service, "get", broken)
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    body = assert_error_shape(r, 500, "internal_error")
    assert "secret" not in r.text and "boom" not in body["error"]
    assert r.headers["x-modelcache-node"] == "n1"
    assert "boom at /srv/secret/place" in caplog.text and "Traceback" in caplog.text


DEEP = b'{"model_type": "churn", "features": ' + b"[" * 1500 + b"]" * 1500 + b"}"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "fragment"),
    [
        (DEEP, {}, 422, "invalid_input", "depth limit"),
        (b'{"model_type": "churn", "features": [NaN, 1, 2, 3]}', {}, 422, "invalid_input", "not valid JSON"),
        (b'{"model_type": "churn", "features": [Infinity, 1, 2, 3]}', {}, 422, "invalid_input", "JSON"),
        (b'{"model_type": "churn", "features": [1e400, 1, 2, 3]}', {}, 422, "invalid_input", "infinity"),
        # Finite as a double, infinite as the float32 the model takes.
        (b'{"model_type": "churn", "features": [1e300, 1, 2, 3]}', {}, 422, "invalid_input", "finite"),
        (
            b'{"model_type": "churn", "features": [1' + b"0" * 40 + b", 1, 2, 3]}",
            {},
            422,
            "invalid_input",
            "",
        ),
        (b"", {}, 422, "invalid_input", "empty"),
        (b"[1, 2]", {}, 422, "invalid_input", "invalid request"),
        (b'"churn"', {}, 422, "invalid_input", "invalid request"),
        (b'{"model_type": "churn", "features": [1, 2, 3, 4]}', {"Content-Type": "text/plain"}, 415, None, ""),
        (b"model_type=churn", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None, "JSON"),
        (b"\x1f\x8b\x08\x00", {"Content-Encoding": "gzip"}, 415, None, "uncompressed"),
        (b'{"model_type": "\xc3\xa9t\xc3\xa9", "features": [1, 2, 3, 4]}', {}, 422, "invalid_name", ""),
        (
            b'{"model_type": "churn", "features": [1, 2, 3, 4], "routing_key": 7}',
            {},
            422,
            "invalid_input",
            "",
        ),
        (b'{"model_type": "churn", "features": {"f0": 1, "f1": 2}}', {}, 422, "invalid_input", "missing"),
        (b'{"model_type": "ch\xffrn", "features": [1, 2, 3, 4]}', {}, 422, "invalid_input", "JSON"),
        (b'{"model_type": "churn", "features": [1, 2, 3, 4], "version": 1}', {}, 422, "invalid_input", ""),
    ],
    ids=[
        "deep-nesting",
        "nan-literal",
        "infinity-literal",
        "1e400",
        "beyond-float32",
        "huge-int",
        "empty",
        "top-level-list",
        "top-level-string",
        "content-type-text",
        "content-type-form",
        "gzip",
        "unicode-model-name",
        "unknown-field",
        "missing-feature-names",
        "invalid-utf8",
        "version-not-a-string",
    ],
)
def test_bad_bodies_are_4xx_in_the_error_shape(
    client: TestClient, content: bytes, headers: dict, status: int, code: str | None, fragment: str
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    r = client.post("/api/v1/predict", content=content, headers=headers)
    body = assert_error_shape(r, status, code)
    assert fragment in body["error"]


def test_duplicate_keys_last_one_wins(client: TestClient) -> None:
    """Defined, not refused: RFC 8259 leaves duplicates to the parser, orjson keeps the last."""
    content = b'{"model_type": "nope", "model_type": "churn", "features": [1, 2, 3, 4]}'
    r = client.post("/api/v1/predict", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["model_type"] == "churn"


def test_null_into_a_model_without_missing_value_support_is_422(
    client: TestClient, registry: Registry, tmp_path
) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), tmp_path / "lr.joblib")
    registry.publish(tmp_path / "lr.joblib", "lr", "1.0", features=FEATURES)
    ok = client.post("/api/v1/predict", json={"model_type": "lr", "features": [1, 2, 3, 4]})
    assert ok.status_code == 200
    r = client.post("/api/v1/predict", json={"model_type": "lr", "features": [1, None, 3, 4]})
    body = assert_error_shape(r, 422, "invalid_input")
    assert "lr 1.0 cannot predict this input" in body["error"] and "missing value" in body["error"]
    r = client.post("/api/v1/batch_predict", json={"model_type": "lr", "instances": [[1, 2, 3, None]]})
    assert_error_shape(r, 422, "invalid_input")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "121", "1e308", "soon"])
def test_timeout_query_is_validated_like_a_body(client: TestClient, value: str) -> None:
    r = client.delete(f"/api/v1/pins/churn?timeout_s={value}", headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")
    assert "timeout_s" in r.json()["error"]


def test_timeout_query_in_bounds_passes_validation(client: TestClient) -> None:
    r = client.delete("/api/v1/pins/churn?timeout_s=120", headers=ADMIN)
    assert_error_shape(r, 501, "not_implemented")  # validated, then: no cluster on this node


@pytest.mark.parametrize("value", ["nan", "inf", -1, 0, 121, 1e308])
def test_timeout_in_bodies_is_bounded_and_finite(client: TestClient, value: object) -> None:
    r = client.put("/api/v1/pins/churn", json={"version": "1.0.0", "timeout_s": value}, headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")
    r = client.post("/api/v1/models/reload", json={"scope": "node", "timeout_s": value}, headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/api/v1/models/reload", b'{"scope": "everywhere", "bogus": [1, 2]}'),
        ("POST", "/api/v1/models/reload", b"{not json"),
        ("PUT", "/api/v1/pins/churn", b'{"version": 7}'),
        ("DELETE", "/api/v1/pins/churn?timeout_s=nan", b""),
        ("POST", "/v2/repository/models/churn/load", b"{not json"),
        ("POST", "/v2/repository/models/churn/load", b'{"parameters": [1]}'),
    ],
)
def test_admin_token_is_checked_before_the_body(
    client: TestClient, method: str, path: str, content: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    r = client.request(method, path, content=content, headers=headers)
    assert_error_shape(r, 401, "unauthorized")
    r = client.request(method, path, content=content, headers={**headers, "Authorization": "Bearer wrong"})
    assert_error_shape(r, 403, "forbidden")


def test_over_limit_batch_is_refused_before_validation(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.schemas import BatchBody, BatchRequest

    calls: list[str] = []
    for model in (BatchRequest, BatchBody):
        real = model.model_validate
        monkeypatch.setattr(
            model, "model_validate", lambda doc, _r=real, **k: calls.append("v") or _r(doc, **k)
        )
    rows = [["not", "numbers", "at", "all"]] * 6
    r = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": rows})
    assert_error_shape(r, 413, "batch_too_large")
    r = client.post("/api/v1/models/churn/batch_predict", json={"instances": rows})
    assert_error_shape(r, 413, "batch_too_large")
    assert calls == []
    r = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 5})
    assert r.status_code == 200 and calls == ["v"]


def test_big_bodies_are_decoded_off_the_event_loop(
    registry: Registry, publish: PublishFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import node.http.common as common

    publish("churn", "1.0.0")
    threads: list[bool] = []
    real = common.decode_body

    def spy(*args: object) -> object:
        try:
            asyncio.get_running_loop()
            threads.append(False)
        except RuntimeError:  # no loop in this thread: a worker
            threads.append(True)
        return real(*args)

    monkeypatch.setattr(common, "decode_body", spy)
    settings = NodeSettings(registry=registry.root, max_batch=10_000, max_body_bytes=1 << 20)
    with TestClient(build_app(settings)) as c:
        small = c.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 10})
        big = c.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 5000})
    assert small.status_code == big.status_code == 200
    assert threads == [False, True]  # inline when small, in asyncio's worker thread when big


def test_errors_do_not_reveal_registry_paths_or_digests(
    client: TestClient, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    import re

    corrupt(registry, registry.metadata("churn", "1.0.0"))  # checksum mismatch
    fraud = registry.metadata("fraud", "1.0.0")
    registry.artifact_path(fraud).unlink()  # "cannot read <path>"
    bad_meta = registry.root / "churn" / "1.1.0" / "metadata.json"
    bad_meta.write_text("{broken")  # MetadataError names the file
    responses = [
        client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.0.0", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.1.0", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "fraud", "features": ROW}),
        client.get("/api/v1/models/churn/versions/1.1.0"),
        client.get("/v2/models/churn/versions/1.1.0"),
        client.post("/v2/models/churn/versions/1.0.0/infer", json={"inputs": [v2_input()]}),
        client.post("/v2/models/fraud/infer", json={"inputs": [v2_input()]}),
    ]
    root = str(registry.root)
    for r in responses:
        assert r.status_code in (503, 422, 404), r.text
        assert root not in r.text and "metadata.json" not in r.text, r.text
        assert not re.search(r"[0-9a-f]{12}", r.json()["error"]), r.text
        assert r.json()["error"] and r.json()["code"]
    assert "churn 1.0.0" in responses[0].json()["error"] and "republish" in responses[0].json()["error"]
    assert "churn 1.1.0" in responses[1].json()["error"]
    assert "fraud 1.0.0" in responses[3].json()["error"]
    assert root in caplog.text  # the operator's log keeps the detail


def v2_input() -> dict:
    return {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.5, -1.0, 2.0, None]}


def test_on_demand_loads_beyond_the_budget_are_429_with_retry_after(
    registry: Registry, publish: PublishFn
) -> None:
    for version in ("1.0", "1.1", "1.2"):
        publish("m", version)
    settings = NodeSettings(registry=registry.root, ondemand_loads_per_min=1, load_retries=1)
    with TestClient(build_app(settings)) as c:
        assert c.post(
            "/api/v1/predict", json={"model_type": "m", "version": "1.0", "features": ROW}
        ).is_success
        r = c.post("/api/v1/predict", json={"model_type": "m", "version": "1.1", "features": ROW})
        assert r.status_code == 429 and r.json()["code"] == "too_many_loads"
        assert int(r.headers["retry-after"]) >= 1
        # Hits of any version and the default version are never limited.
        assert c.post(
            "/api/v1/predict", json={"model_type": "m", "version": "1.0", "features": ROW}
        ).is_success
        assert c.post("/api/v1/predict", json={"model_type": "m", "features": ROW}).json()["version"] == "1.2"


def test_readyz_says_when_loading_is_wedged(registry: Registry, publish: PublishFn) -> None:
    path = registry.artifact_path(publish("hung", "1.0"))
    path.unlink()
    os.mkfifo(path)  # open() blocks, as a read on a hung network filesystem does
    settings = NodeSettings(registry=registry.root, load_timeout_s=0.3, load_workers=1, load_retries=1)
    try:
        with TestClient(build_app(settings)) as c:
            assert c.get("/readyz").status_code == 200
            r = c.post("/api/v1/predict", json={"model_type": "hung", "features": ROW})
            assert r.status_code == 503 and "longer than 0.3s" in r.json()["error"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "stuck" in ready.json()["error"]
            assert c.get("/v2/health/ready").status_code == 503
            assert c.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        with contextlib.suppress(OSError):  # unblock the stuck reader so its thread ends
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_failing_warm_up_still_ends_ready(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    settings = NodeSettings(registry=registry.root)
    metrics = NodeMetrics(CollectorRegistry())

    def warmup() -> list[str]:
        raise RuntimeError("cluster state unreadable")

    app = create_app(settings, build_service(settings, metrics), metrics, warmup=warmup)
    with TestClient(app) as c:
        assert eventually(lambda: c.get("/readyz").status_code == 200, timeout=5)
        assert c.post("/api/v1/predict", json={"model_type": "m", "features": ROW}).is_success


def test_readyz_reports_cluster_sync_problems(registry: Registry, publish: PublishFn) -> None:
    """The wiring only: node/sync's own tests provoke a sync thread that keeps failing."""
    publish("m", "1.0")
    settings = NodeSettings(registry=registry.root)
    metrics = NodeMetrics(CollectorRegistry())

    class FailingSync:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        def problems(self) -> list[str]:
            return ["loop: 3 errors in a row, last: boom"]

    app = create_app(settings, build_service(settings, metrics), metrics, cluster=FailingSync())  # type: ignore[arg-type]
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "loop: 3 errors in a row" in r.json()["error"]
        assert c.post("/api/v1/predict", json={"model_type": "m", "features": ROW}).is_success
