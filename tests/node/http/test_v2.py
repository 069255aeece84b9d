"""Open Inference Protocol (V2) routes: every endpoint and error, in process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import xgboost as xgb
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn, corrupt

TOKEN = "v2-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(registry: Registry, publish: PublishFn) -> Iterator[TestClient]:
    publish("churn", "1.0.0", seed=1)
    publish("churn", "1.1.0", seed=2)
    publish("reg", "1.0", objective="reg:squarederror")
    settings = NodeSettings(registry=registry.root, admin_token=TOKEN, max_batch=200, load_retries=1)
    with TestClient(build_app(settings)) as c:
        yield c


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def own_xgboost(registry: Registry, model_type: str, version: str, x: np.ndarray) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(registry.artifact_path(registry.metadata(model_type, version)))
    return booster.predict(xgb.DMatrix(x))


def tensor(x: np.ndarray, datatype: str = "FP32", nested: bool = True) -> dict:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    return {"name": "input-0", "shape": list(x.shape), "datatype": datatype, "data": data}


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "modelcache" and "model_repository" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_model_metadata_without_loading(client: TestClient) -> None:
    meta = client.get("/v2/models/churn").json()
    assert meta["name"] == "churn" and meta["versions"] == ["1.0.0", "1.1.0"]
    assert meta["platform"] == "xgboost"
    assert meta["inputs"] == [
        {
            "name": "input-0",
            "datatype": "FP32",
            "shape": [-1, 4],
            "parameters": {"feature_names": ["f0", "f1", "f2", "f3"]},
        }
    ]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert meta["parameters"]["version"] == "1.1.0"
    assert client.get("/v2/models/churn/versions/1.0.0").json()["parameters"]["version"] == "1.0.0"
    assert client.get("/api/v1/cache/stats").json()["cached_models"] == 0


def test_model_ready_means_loaded_on_this_node(client: TestClient) -> None:
    r = client.get("/v2/models/churn/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    x = rows(1)
    assert client.post("/v2/models/churn/infer", json={"inputs": [tensor(x)]}).status_code == 200
    r = client.get("/v2/models/churn/ready")
    assert r.status_code == 200 and r.json() == {"name": "churn", "version": "1.1.0", "ready": True}
    assert client.get("/v2/models/churn/versions/1.0.0/ready").status_code == 503
    assert client.get("/v2/models/nope/ready").status_code == 404


@pytest.mark.parametrize("n", [1, 100])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
@pytest.mark.parametrize("nested", [True, False])
def test_infer_matches_xgboost(
    client: TestClient, registry: Registry, n: int, datatype: str, nested: bool
) -> None:
    x = rows(n)
    if datatype == "INT64":
        x = np.round(x * 3)
    body = {"id": "req-1", "inputs": [tensor(x.astype(np.float64), datatype, nested)]}
    r = client.post("/v2/models/churn/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model_name"], out["model_version"], out["id"]) == ("churn", "1.1.0", "req-1")
    outputs = {o["name"]: o for o in out["outputs"]}
    want = own_xgboost(registry, "churn", "1.1.0", x.astype(np.float32))
    proba = np.array(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
    assert outputs["predict_proba"]["shape"] == [n, 2]
    np.testing.assert_allclose(proba[:, 1], want, atol=1e-6)
    assert outputs["predict"]["shape"] == [n] and outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict"]["data"] == (want >= 0.5).astype(int).tolist()


def test_infer_version_outputs_and_regression(client: TestClient, registry: Registry) -> None:
    x = rows(3)
    body = {"inputs": [tensor(x)], "outputs": [{"name": "predict_proba"}]}
    out = client.post("/v2/models/churn/versions/1.0.0/infer", json=body).json()
    assert out["model_version"] == "1.0.0" and [o["name"] for o in out["outputs"]] == ["predict_proba"]
    np.testing.assert_allclose(
        np.array(out["outputs"][0]["data"])[1::2], own_xgboost(registry, "churn", "1.0.0", x), atol=1e-6
    )
    reg = client.post("/v2/models/reg/infer", json={"inputs": [tensor(x)]}).json()
    assert [o["name"] for o in reg["outputs"]] == ["predict"]
    np.testing.assert_allclose(reg["outputs"][0]["data"], own_xgboost(registry, "reg", "1.0", x), atol=1e-6)


def test_binary_tensor_extension(client: TestClient, registry: Registry) -> None:
    x = rows(4)
    raw = x.tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [4, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}],
        }
    )
    r = client.post(
        "/v2/models/churn/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:n])
    [out] = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 4 * 2 * 4 and "data" not in out
    proba = np.frombuffer(r.content[n:], dtype="<f4").reshape(4, 2)
    np.testing.assert_allclose(proba[:, 1], own_xgboost(registry, "churn", "1.1.0", x), atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "shape must be [N, 4]"),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}], "takes 4 features"),
        ([{"name": "x", "shape": [1, 4], "datatype": "STRING", "data": [1, 2, 3, 4]}], "datatype 'STRING'"),
        (
            [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "needs 8 values, data has 4",
        ),
        (
            [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4, 5], [1, 2, 3]]}],
            "nested data does not have shape",
        ),
        ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, "a", 3, 4]}], "not a valid FP32"),
        ([{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2.5, 3, 4]}], "not an integer"),
        ([], "non-empty list"),
    ],
)
def test_bad_tensors_are_400(client: TestClient, inputs: list, fragment: str) -> None:
    r = client.post("/v2/models/churn/infer", json={"inputs": inputs})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_other_infer_errors(client: TestClient, registry: Registry) -> None:
    good = {"inputs": [tensor(rows(1))]}
    r = client.post("/v2/models/churn/infer", json={**good, "outputs": [{"name": "logits"}]})
    assert r.status_code == 400 and "unknown output(s) logits" in r.json()["error"]
    r = client.post("/v2/models/churn/infer", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert client.post("/v2/models/nope/infer", json=good).status_code == 404
    assert client.post("/v2/models/churn/versions/9.9/infer", json=good).status_code == 404
    assert client.get("/v2/models/nope").status_code == 404
    assert client.post("/v2/models/churn/infer", json={"inputs": [tensor(rows(201))]}).status_code == 413
    corrupt(registry, registry.metadata("churn", "1.0.0"))
    r = client.post("/v2/models/churn/versions/1.0.0/infer", json=good)
    assert r.status_code == 503 and "sha256" in r.json()["error"]


def test_fallback_applies_as_on_v1(client: TestClient, registry: Registry) -> None:
    corrupt(registry, registry.metadata("churn", "1.1.0"))
    out = client.post("/v2/models/churn/infer", json={"inputs": [tensor(rows(1))]}).json()
    assert out["model_version"] == "1.0.0" and out["parameters"]["fallback_from"] == "1.1.0"


def test_repository_extension(client: TestClient) -> None:
    index = client.post("/v2/repository/index").json()
    assert {(r["name"], r["version"], r["state"]) for r in index} == {
        ("churn", "1.0.0", "UNAVAILABLE"),
        ("churn", "1.1.0", "UNAVAILABLE"),
        ("reg", "1.0", "UNAVAILABLE"),
    }
    assert client.post("/v2/repository/models/churn/load").status_code == 401
    r = client.post("/v2/repository/models/churn/load", json={}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["version"] == "1.1.0"
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": "churn", "version": "1.1.0", "state": "READY", "reason": ""}
    ]
    r = client.post("/v2/repository/models/churn/unload", json={}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["unloaded"] == ["1.1.0"]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []
    assert client.post("/v2/repository/models/nope/load", headers=ADMIN).status_code == 404


def test_v2_requests_count_in_the_same_metrics(client: TestClient) -> None:
    for _ in range(2):
        client.post("/v2/models/churn/infer", json={"inputs": [tensor(rows(5))]})
    text = client.get("/metrics").text
    assert 'modelcache_cache_hits_total{model_type="churn"} 1.0' in text
    assert 'modelcache_cache_misses_total{model_type="churn"} 1.0' in text
    assert 'modelcache_predictions_total{model_type="churn",version="1.1.0"} 10.0' in text


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [tensor(rows(1))], "parameters": [1, 2]},
        {"inputs": [tensor(rows(1))], "parameters": "binary"},
        {"inputs": {"name": "input-0"}},
        {"inputs": [1, 2]},
        {"inputs": "x"},
        {"inputs": [tensor(rows(1))], "outputs": {"name": "predict"}},
        {"inputs": [tensor(rows(1))], "outputs": [{"name": ["predict"]}]},
        {"inputs": [tensor(rows(1))], "outputs": [{"name": "predict", "parameters": [True]}]},
        {"inputs": [{**tensor(rows(1)), "parameters": [1]}]},
        {"inputs": [{**tensor(rows(1)), "datatype": ["FP32"]}]},
        {"inputs": [{**tensor(rows(1)), "datatype": {"a": 1}}]},
        {"inputs": [{**tensor(rows(1)), "shape": [1, "4"]}]},
        {"inputs": [{**tensor(rows(1)), "shape": [1, True, 4]}]},
        {"inputs": [{**tensor(rows(1)), "parameters": {"binary_data_size": "sixteen"}}]},
        {"inputs": [{**tensor(rows(1)), "parameters": {"binary_data_size": -16}}]},
        {"inputs": [{**tensor(rows(1)), "parameters": {"binary_data_size": 1.5}}]},
        {"inputs": [{**tensor(rows(1)), "data": [[1, 2], [3, 4]]}]},
        {"inputs": [{**tensor(rows(1)), "data": [[[1, 2, 3, 4]]]}]},
        {"inputs": [{**tensor(rows(1)), "data": [1, [2, 3], 4]}]},
        {"inputs": [{**tensor(rows(1)), "data": [True, 1.0, 2.0, 3.0]}]},
        {"inputs": [{**tensor(rows(1)), "data": [1e300, 1.0, 2.0, 3.0]}]},
        {"inputs": [{**tensor(rows(1)), "data": {"a": 1}}]},
        {"inputs": [tensor(rows(1))], "id": {"nested": [1]}},
        [tensor(rows(1))],
    ],
)
def test_wrong_types_anywhere_are_400(client: TestClient, body: object) -> None:
    r = client.post("/v2/models/churn/infer", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "code"} and r.json()["code"] == "bad_tensor"


def test_v2_bodies_that_no_parser_accepts_are_400(client: TestClient) -> None:
    deep = b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    for content in (deep, b'{"inputs": [NaN]}', b'{"inputs": [1e400]}', b"", b"\xff\xfe"):
        r = client.post("/v2/models/churn/infer", content=content)
        assert r.status_code == 400 and r.json()["code"] == "bad_tensor", (content[:20], r.text)


def test_over_limit_batch_is_refused_on_its_shape(client: TestClient) -> None:
    """The declared shape is enough: 201 rows (limit 200) answer 413 before any data is decoded."""
    body = {"inputs": [{"name": "input-0", "shape": [201, 4], "datatype": "FP32", "data": []}]}
    r = client.post("/v2/models/churn/infer", json=body)
    assert r.status_code == 413 and r.json()["code"] == "batch_too_large"


def test_null_into_a_model_without_missing_value_support_is_400(
    client: TestClient, registry: Registry, tmp_path
) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    x = rows(50).astype(np.float64)
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), tmp_path / "lr.joblib")
    registry.publish(tmp_path / "lr.joblib", "lr", "1.0")
    good = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
    assert client.post("/v2/models/lr/infer", json={"inputs": [good]}).status_code == 200
    r = client.post("/v2/models/lr/infer", json={"inputs": [{**good, "data": [1, None, 3, 4]}]})
    assert r.status_code == 400 and "missing value" in r.json()["error"]


@pytest.mark.parametrize("body", [{"parameters": [1]}, {"parameters": {"version": 1}}, [1]])
def test_repository_load_checks_types(client: TestClient, body: object) -> None:
    r = client.post("/v2/repository/models/churn/load", json=body, headers=ADMIN)
    assert r.status_code == 400 and r.json()["code"] == "bad_tensor"
