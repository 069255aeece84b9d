"""A client this project did not write: NVIDIA's `tritonclient[http]` against a real node."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as triton
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from coordinator.registry import Registry
from tests.helpers import NodeProcess, PublishFn

TOKEN = "triton-token"


def own_xgboost(registry: Registry, version: str, x: np.ndarray) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(registry.artifact_path(registry.metadata("churn", version)))
    return booster.predict(xgb.DMatrix(x))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_drives_a_node(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], binary: bool
) -> None:
    publish("churn", "1.0.0", seed=4)
    publish("churn", "1.1.0", seed=5)
    node = node_process(registry.root, MODELCACHE_ADMIN_TOKEN=TOKEN)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{node.port}")
    admin = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert "model_repository" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("churn")
        assert meta["inputs"][0]["shape"] == [-1, 4] and meta["platform"] == "xgboost"
        assert client.get_model_metadata("churn", "1.0.0")["parameters"]["version"] == "1.0.0"
        assert not client.is_model_ready("churn")

        x = np.random.default_rng(7).normal(size=(100, 4)).astype(np.float32)
        inp = triton.InferInput("input-0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("predict", "predict_proba")]
        result = client.infer("churn", [inp], outputs=outputs, request_id="abc")
        want = own_xgboost(registry, "1.1.0", x)
        np.testing.assert_allclose(result.as_numpy("predict_proba")[:, 1], want, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("predict"), (want >= 0.5).astype(np.int64))
        response = result.get_response()
        assert (response["model_version"], response["id"]) == ("1.1.0", "abc")
        assert client.is_model_ready("churn")

        older = client.infer("churn", [inp], model_version="1.0.0", outputs=outputs[1:])
        np.testing.assert_allclose(
            older.as_numpy("predict_proba")[:, 1], own_xgboost(registry, "1.0.0", x), atol=1e-6
        )

        index = client.get_model_repository_index()
        assert {(r["name"], r["version"], r["state"]) for r in index} == {
            ("churn", "1.0.0", "READY"),
            ("churn", "1.1.0", "READY"),
        }
        client.unload_model("churn", headers=admin)
        assert not client.is_model_ready("churn")
        assert {r["state"] for r in client.get_model_repository_index()} == {"UNAVAILABLE"}
        client.load_model("churn", headers=admin)
        assert client.is_model_ready("churn")

        with pytest.raises(InferenceServerException, match="admin route"):
            client.load_model("churn")
        with pytest.raises(InferenceServerException, match="unknown model type 'nope'"):
            client.get_model_metadata("nope")
        bad = triton.InferInput("input-0", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException, match="takes 4 features"):
            client.infer("churn", [bad])
    finally:
        client.close()
