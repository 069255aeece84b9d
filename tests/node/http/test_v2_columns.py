"""V2 inference with one input per feature column (MLServer's pandas codec), in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import FEATURES, PublishFn, train_booster
from tests.node.http.support import assert_error_shape


@pytest.fixture
def client(registry: Registry, publish: PublishFn, tmp_path: Path) -> Iterator[TestClient]:
    publish("churn", "1.0.0", seed=1)
    train_booster(2).save_model(tmp_path / "anon.ubj")
    registry.publish(tmp_path / "anon.ubj", "anon", "1.0.0")  # no feature names
    settings = NodeSettings(registry=registry.root, max_batch=100, load_retries=1)
    with TestClient(build_app(settings)) as c:
        yield c


X = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
X[1, 2] = np.nan


def columns(
    x: np.ndarray, order: tuple[str, ...] = FEATURES, shape: str = "N1", datatype: str = "FP32"
) -> list:
    out = []
    for name in order:
        col = x[:, FEATURES.index(name)]
        data = [None if np.isnan(v) else float(v) for v in col]
        dims = [len(col), 1] if shape == "N1" else [len(col)]
        out.append({"name": name, "shape": dims, "datatype": datatype, "data": data})
    return out


def infer(client: TestClient, inputs: list, **extra: object):
    return client.post("/v2/models/churn/infer", json={"inputs": inputs, **extra})


def one_tensor(client: TestClient, x: np.ndarray) -> dict:
    data = [[None if np.isnan(v) else float(v) for v in row] for row in x]
    r = infer(client, [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": data}])
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


@pytest.mark.parametrize("shape", ["N1", "N"])
def test_columns_answer_as_the_one_tensor(client: TestClient, shape: str) -> None:
    shuffled = (FEATURES[2], FEATURES[0], FEATURES[3], FEATURES[1])
    pandas_style = {"parameters": {"content_type": "pd"}}
    r = infer(client, columns(X, shuffled, shape), **pandas_style)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == one_tensor(client, X)


def test_columns_of_other_datatypes_and_binary_data(client: TestClient) -> None:
    x = np.round(X * 4)
    x[np.isnan(x)] = 0
    head_inputs, tail = [], b""
    for i, name in enumerate(FEATURES):
        raw = x[:, i].astype("<i8").tobytes() if i % 2 else x[:, i].astype("<f8").tobytes()
        datatype = "INT64" if i % 2 else "FP64"
        head_inputs.append(
            {
                "name": name,
                "shape": [len(x), 1],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        tail += raw
    head = orjson.dumps({"inputs": head_inputs})
    r = client.post(
        "/v2/models/churn/infer",
        content=head + tail,
        headers={
            "inference-header-content-length": str(len(head)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == one_tensor(client, x.astype(np.float32))


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (columns(X, FEATURES[:3]), "missing input(s) f3"),
        (
            [*columns(X), {"name": "zz", "shape": [5, 1], "datatype": "FP32", "data": [0.0] * 5}],
            "unknown input(s) zz",
        ),
        (columns(X)[:3] + columns(X[:4])[3:], "has 4 rows, the first input has 5"),
        (columns(X) + columns(X)[:1], "sent twice"),
        ([{**c, "shape": [5, 2]} for c in columns(X)], "shape [N] or [N, 1]"),
        ([{**c, "data": c["data"][:4]} for c in columns(X)], "shape needs 5 values, data has 4"),
        (columns(X)[:1], "missing input(s) f1, f2, f3"),
        ([{k: v for k, v in c.items() if k != "name"} for c in columns(X)], 'feature "name"'),
        ([{**c, "datatype": "BYTES"} for c in columns(X)], "datatype 'BYTES'"),
        ([{**c, "data": ["a"] * 5} for c in columns(X)], "not a valid FP32 value"),
    ],
)
def test_bad_columns_are_clear_400s(client: TestClient, inputs: list, words: str) -> None:
    error = assert_error_shape(infer(client, inputs), 400, "bad_tensor")["error"]
    assert words in error, error


def test_a_model_without_feature_names_asks_for_one_tensor(client: TestClient) -> None:
    r = client.post("/v2/models/anon/infer", json={"inputs": columns(X)})
    assert "no feature names" in assert_error_shape(r, 400, "bad_tensor")["error"]


def test_too_many_rows_in_columns_is_413(client: TestClient) -> None:
    big = np.zeros((101, 4), dtype=np.float32)
    assert_error_shape(infer(client, columns(big)), 413, "batch_too_large")
