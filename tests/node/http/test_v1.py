"""The v1 protocol (node.http.v1): predictions and the model listing, in process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import FEATURES, PublishFn, corrupt
from tests.node.http.support import ROW, assert_error_shape


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
