"""gRPC through HAProxy (coordinator.lb's gRPC frontend): HTTP/2 to the nodes, affinity by model metadata."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest

from coordinator.haproxy_process import HAProxy, find_haproxy
from coordinator.lb import GRPC_MODEL_HEADER
from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import PublishFn, free_port
from tests.node.grpc.conftest import GrpcNode

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy not installed")
MODELS = ("churn", "fraud", "upsell", "risk")


def infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, metadata: tuple = ()) -> str:
    """The node that answered (the response's node_id parameter)."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=[1, 4])
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[np.zeros((1, 4), np.float32).tobytes()]
    )
    return stub.ModelInfer(request, metadata=metadata, timeout=30).parameters["node_id"].string_param


def test_model_metadata_pins_a_model_to_its_rest_home_node(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    for model in MODELS:
        publish(model, "1.0.0")
    nodes = [grpc_node(MODELCACHE_CACHE_SIZE="4") for _ in range(3)]
    lb = HAProxy(
        [f"127.0.0.1:{n.node.port}" for n in nodes],
        free_port(),
        grpc=(free_port(), [n.target for n in nodes]),
    )
    with lb, grpc.insecure_channel(f"127.0.0.1:{lb.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
        homes = set()
        for model in MODELS:
            served = {infer(stub, model, ((GRPC_MODEL_HEADER, model),)) for _ in range(5)}
            assert len(served) == 1, (model, served)  # one home per model ...
            rest = httpx.post(f"{lb.url}/v2/models/{model}/infer", json=body, timeout=30).json()
            assert served == {rest["parameters"]["node_id"]}  # ... the one REST sends it to
            homes |= served
        assert len(homes) > 1  # and the models are spread over the nodes

        # Without the metadata the model is invisible to HAProxy: calls are spread.
        spread = {infer(stub, "churn") for _ in range(9)}
        assert len(spread) == 3
