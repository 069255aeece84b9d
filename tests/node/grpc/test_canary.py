"""A canary over gRPC: the routing key as metadata (or a parameter) routes as the REST header does."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np

from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, free_port

ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
KEYS = [f"user-{i}" for i in range(24)]


def test_routing_key_metadata_picks_the_version_the_rest_header_picks(
    cluster: Callable[..., list[NodeProcess]], publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "2.0.0")
    grpc_port = free_port()
    (node,) = cluster(1, MODELCACHE_GRPC_PORT=str(grpc_port))
    body = {"version": "2.0.0", "percent": 50, "wait": True}
    r = httpx.put(f"{node.url}/api/v1/pins/churn", json={"version": "1.0.0", "wait": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = httpx.put(f"{node.url}/api/v1/canaries/churn", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text

    x = np.zeros((1, 4), np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=[1, 4])
    rest_body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, httpx.Client() as client:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        by_metadata, by_parameter, by_rest = [], [], []
        for key in KEYS:
            request = pb.ModelInferRequest(
                model_name="churn", inputs=[tensor], raw_input_contents=[x.tobytes()]
            )
            by_metadata.append(
                stub.ModelInfer(request, metadata=(("x-modelcache-routing-key", key),)).model_version
            )
            request.parameters["routing_key"].string_param = key
            by_parameter.append(stub.ModelInfer(request).model_version)
            answer = client.post(
                f"{node.url}/v2/models/churn/infer", json=rest_body, headers={"X-Modelcache-Routing-Key": key}
            )
            by_rest.append(answer.json()["model_version"])
    assert by_metadata == by_rest == by_parameter
    assert set(by_rest) == {"1.0.0", "2.0.0"}  # the key decides: both versions are served
