"""Every route and every error code, in process (FastAPI's test client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import FEATURES, PublishFn, corrupt

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

    from node.api import create_app
    from node.app import build_service
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
