"""A client this project did not write: NVIDIA's `tritonclient.grpc`, unchanged, against a real node.

It infers, reads metadata and the repository index, and gets what the V2 REST
route answers for the same input. The client runs in a subprocess (see
triton_client.py for why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from coordinator.registry import Registry
from tests.helpers import PublishFn
from tests.node.grpc.conftest import TOKEN, GrpcNode

CLIENT = Path(__file__).with_name("triton_client.py")


def test_tritonclient_grpc_gets_the_v2_rest_answer(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    publish("churn", "1.0.0", seed=4)
    publish("churn", "1.1.0", seed=5)
    node = grpc_node()
    x = np.random.default_rng(7).normal(size=(20, 4)).astype(np.float32)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, str(CLIENT), node.target, TOKEN, json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)

    assert got["live"] and got["ready"]
    assert "model_repository" in got["server"]["extensions"]
    rest_meta = httpx.get(node.node.url + "/v2/models/churn").json()
    assert got["metadata"]["versions"] == rest_meta["versions"] == ["1.0.0", "1.1.0"]
    assert got["metadata"]["platform"] == rest_meta["platform"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in got["metadata"]["inputs"]] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest_meta["inputs"]
    ]
    assert not got["model_ready_before"] and got["model_ready_after"]

    body = {"inputs": [{"name": "input-0", "shape": [20, 4], "datatype": "FP32", "data": x.tolist()}]}
    rest = httpx.post(node.node.url + "/v2/models/churn/infer", json=body).json()
    rest_out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in rest["outputs"]}
    assert (got["infer"]["model_version"], got["infer"]["id"]) == (rest["model_version"], "t-1")
    np.testing.assert_array_equal(np.array(got["infer"]["predict"]), rest_out["predict"])
    np.testing.assert_allclose(np.array(got["infer"]["predict_proba"]), rest_out["predict_proba"], rtol=1e-6)
    rest_older = httpx.post(node.node.url + "/v2/models/churn/versions/1.0.0/infer", json=body).json()
    np.testing.assert_allclose(
        np.array(got["infer_older"]), np.array(rest_older["outputs"][1]["data"]).reshape(20, 2), rtol=1e-6
    )

    rest_index = httpx.post(node.node.url + "/v2/repository/index").json()
    assert {(m["name"], m["version"]) for m in got["index"]} == {
        (r["name"], r["version"]) for r in rest_index
    }
    # Both versions were loaded by the inferences, unload_model dropped both, load_model the default.
    index = {(m["name"], m["version"], m["state"]) for m in got["index_ready"]}
    assert index == {("churn", "1.0.0", "UNAVAILABLE"), ("churn", "1.1.0", "READY")}

    unknown_rest = httpx.post(node.node.url + "/v2/models/nope/infer", json=body).json()
    assert got["unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert got["unknown"]["message"] == unknown_rest["error"]
    assert got["unload_refused"] == "StatusCode.UNAUTHENTICATED"
