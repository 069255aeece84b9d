"""KServe V1 routes (`/v1/models/{name}`, `/v1/models/{name}:predict`), in process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import FEATURES
from tests.node.http.support import ROW, assert_error_shape


def predict(client: TestClient, name: str, body: object, **kwargs: object):
    return client.post(f"/v1/models/{name}:predict", json=body, **kwargs)


def test_ready_is_503_until_loaded_then_200(client: TestClient) -> None:
    r = client.get("/v1/models/churn")
    assert r.status_code == 503 and r.json()["ready"] is False and r.json()["name"] == "churn"
    assert "not loaded" in r.json()["error"]
    assert predict(client, "churn", {"instances": [ROW]}).status_code == 200
    r = client.get("/v1/models/churn")
    assert r.status_code == 200 and r.json() == {"name": "churn", "ready": True}


def test_predictions_equal_the_v1_batch_answer(client: TestClient) -> None:
    rows = [ROW, [0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 1.0, 2.0]]
    r = predict(client, "churn", {"instances": rows})
    assert r.status_code == 200, r.text
    assert r.headers["x-modelcache-version"] == "1.1.0"
    body = r.json()
    want = client.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": rows}).json()
    assert body == {"predictions": want["predictions"], "probabilities": want["probabilities"]}
    assert all(p in (0, 1) for p in body["predictions"])


def test_rows_by_feature_name_answer_as_rows_in_order(client: TestClient) -> None:
    rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, None, 0.5]]
    named = [dict(zip(reversed(FEATURES), reversed(r), strict=True)) for r in rows]
    assert (
        predict(client, "churn", {"instances": named}).json()
        == predict(client, "churn", {"instances": rows}).json()
    )


def test_predictions_are_counted_like_every_other_protocol(client: TestClient) -> None:
    predict(client, "fraud", {"instances": [ROW, ROW]})
    metrics = client.get("/metrics").text
    line = next(
        m for m in metrics.splitlines() if m.startswith("modelcache_predictions_total{") and "fraud" in m
    )
    assert float(line.rsplit(" ", 1)[1]) == 2.0
    assert 'route="/v1/models/{name}:predict"' in metrics


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"rows": [ROW]}, 400, "invalid_input", '"instances"'),
        ({"instances": []}, 400, "invalid_input", "empty"),
        ({"instances": [[0.1, 0.2]]}, 400, "invalid_input", "expected 4 features"),
        ({"instances": [[0.1, "0.2", 0.3, 0.4]]}, 400, "invalid_input", "instance 0"),
        ({"instances": [[True, 0.2, 0.3, 0.4]]}, 400, "invalid_input", "instance 0"),
        ({"instances": [ROW, 5]}, 400, "invalid_input", "instance 1"),
        ({"instances": [{"f0": 1, "f1": 2, "f2": 3}]}, 400, "invalid_input", "missing feature(s) f3"),
        ({"instances": [{"f0": 1, "f1": 2, "f2": 3, "f3": 4, "zz": 1}]}, 400, "invalid_input", "unknown"),
        ({"instances": [[1e300, 0.2, 0.3, 0.4]]}, 400, "invalid_input", "finite"),
        ([ROW], 400, "invalid_input", '"instances"'),
        ({"instances": [ROW] * 6}, 413, "batch_too_large", "5"),
    ],
)
def test_bad_bodies_are_clear_errors(
    client: TestClient, body: object, status: int, code: str, words: str
) -> None:
    error = assert_error_shape(predict(client, "churn", body), status, code)["error"]
    assert words in error, error


def test_unknown_model_is_404_on_both_routes(client: TestClient) -> None:
    assert_error_shape(predict(client, "nope", {"instances": [ROW]}), 404)
    assert_error_shape(client.get("/v1/models/nope"), 404)


def test_not_json_is_refused(client: TestClient) -> None:
    r = client.post("/v1/models/churn:predict", content=b"{", headers={"content-type": "application/json"})
    assert_error_shape(r, 400, "invalid_input")
    r = client.post("/v1/models/churn:predict", content=b"a,b", headers={"content-type": "text/csv"})
    assert_error_shape(r, 415)


def test_v1_paths_do_not_shadow_the_api_v1_routes(client: TestClient) -> None:
    r = client.post("/api/v1/models/churn/predict", json={"features": ROW})
    assert r.status_code == 200 and r.json()["model_type"] == "churn"
    assert_error_shape(client.post("/v1/models/churn/predict", json={"instances": [ROW]}), 404)


def test_a_regressor_answers_values_without_probabilities(client: TestClient, publish) -> None:
    publish("reg", "1.0", objective="reg:squarederror")
    body = predict(client, "reg", {"instances": [ROW]}).json()
    assert set(body) == {"predictions"} and isinstance(body["predictions"][0], float)
    assert np.isfinite(body["predictions"][0])


VALUES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=3)
ROWS = st.lists(VALUES, max_size=6) | st.dictionaries(st.sampled_from([*FEATURES, "zz"]), VALUES, max_size=5)
BODIES = (
    st.fixed_dictionaries({}, optional={"instances": st.lists(ROWS | VALUES, max_size=7) | VALUES}) | VALUES
)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES)
def test_junk_bodies_get_4xx_in_the_error_shape_never_5xx(client: TestClient, body: object) -> None:
    raw = json.dumps(body).encode()  # json, not orjson: NaN, Infinity and big integers reach the node
    r = client.post("/v1/models/churn:predict", content=raw, headers={"content-type": "application/json"})
    if r.status_code != 200:
        assert_error_shape(r, r.status_code)
        assert r.status_code in (400, 413), r.text
