"""Run by test_tritonclient.py in its own process: NVIDIA's tritonclient.grpc against a node.

tritonclient's generated protobuf modules declare the same `inference.*` symbols as
node.grpc's, and one process's protobuf pool cannot hold both; so the client runs
here and prints what it got as one JSON document.

usage: python triton_client.py HOST:PORT TOKEN X_JSON
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(target: str, token: str, rows: str) -> dict:
    client = triton.InferenceServerClient(url=target)
    admin = {"authorization": f"Bearer {token}"}
    x = np.array(json.loads(rows), dtype=np.float32)
    out: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("churn", as_json=True),
        "model_ready_before": client.is_model_ready("churn"),
    }
    inp = triton.InferInput("input-0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    wanted = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("churn", [inp], outputs=wanted, request_id="t-1")
    response = result.get_response(as_json=True)
    out["infer"] = {
        "model_version": response["model_version"],
        "id": response["id"],
        "predict": result.as_numpy("predict").tolist(),
        "predict_proba": result.as_numpy("predict_proba").tolist(),
    }
    older = client.infer("churn", [inp], model_version="1.0.0", outputs=wanted[1:])
    out["infer_older"] = older.as_numpy("predict_proba").tolist()
    out["model_ready_after"] = client.is_model_ready("churn")
    out["index"] = client.get_model_repository_index(as_json=True).get("models", [])
    try:
        client.infer("nope", [inp])
    except InferenceServerException as exc:
        out["unknown"] = {"status": exc.status(), "message": exc.message()}
    try:
        client.unload_model("churn")
    except InferenceServerException as exc:
        out["unload_refused"] = exc.status()
    client.unload_model("churn", headers=admin)
    client.load_model("churn", headers=admin)
    out["index_ready"] = client.get_model_repository_index(as_json=True).get("models", [])
    client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
