"""The gRPC door of a real node: the same answers, errors and metrics as the V2 REST door."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest

from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb
from tests.helpers import PublishFn, metric
from tests.node.grpc.conftest import TOKEN, GrpcNode

Tensor = pb.ModelInferRequest.InferInputTensor
ADMIN = (("authorization", f"Bearer {TOKEN}"),)


def raw_request(x: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    tensor = Tensor(name="input-0", datatype="FP32", shape=list(x.shape))
    fields = {"model_name": "churn", **fields}
    return pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[x.tobytes()], **fields)


def typed_request(x: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    contents = pb.InferTensorContents(fp32_contents=x.ravel().tolist())
    tensor = Tensor(name="input-0", datatype="FP32", shape=list(x.shape), contents=contents)
    fields = {"model_name": "churn", **fields}
    return pb.ModelInferRequest(inputs=[tensor], **fields)


def rest_infer(node: GrpcNode, x: np.ndarray, version: str | None = None) -> dict:
    path = f"/v2/models/churn/versions/{version}/infer" if version else "/v2/models/churn/infer"
    body = {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    response = httpx.post(node.node.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each output as an array, from raw_output_contents or typed contents."""
    dtypes = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8"}
    fields = {"INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}
    out = {}
    for i, tensor in enumerate(response.outputs):
        if response.raw_output_contents:
            flat = np.frombuffer(response.raw_output_contents[i], dtype=dtypes[tensor.datatype])
        else:
            flat = np.array(getattr(tensor.contents, fields[tensor.datatype]), dtype=dtypes[tensor.datatype])
        out[tensor.name] = flat.reshape(list(tensor.shape))
    return out


def rest_outputs(doc: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


@pytest.mark.parametrize("make", [raw_request, typed_request], ids=["raw", "typed"])
def test_infer_answers_what_the_v2_rest_route_answers(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode], make: Callable
) -> None:
    publish("churn", "1.0.0", seed=3)
    publish("churn", "1.1.0", seed=4)
    node = grpc_node()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)

    response = node.stub.ModelInfer(make(x, id="req-1"))
    rest = rest_infer(node, x)
    assert (response.model_name, response.model_version, response.id) == ("churn", "1.1.0", "req-1")
    assert bool(response.raw_output_contents) == (make is raw_request)
    got, want = outputs(response), rest_outputs(rest)
    assert list(got) == ["predict", "predict_proba"] == list(want)
    np.testing.assert_array_equal(got["predict"], want["predict"])
    np.testing.assert_allclose(got["predict_proba"], want["predict_proba"], rtol=1e-6)
    assert response.parameters["node_id"].string_param == rest["parameters"]["node_id"]

    older = node.stub.ModelInfer(make(x, model_version="1.0.0", outputs=[{"name": "predict_proba"}]))
    assert older.model_version == "1.0.0" and [o.name for o in older.outputs] == ["predict_proba"]
    np.testing.assert_allclose(
        outputs(older)["predict_proba"],
        rest_outputs(rest_infer(node, x, "1.0.0"))["predict_proba"],
        rtol=1e-6,
    )


def test_health_and_metadata_match_rest(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    publish("churn", "1.0.0")
    node = grpc_node()
    stub = node.stub
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    rest_server = httpx.get(node.node.url + "/v2").json()
    assert (server.name, list(server.extensions)) == (rest_server["name"], rest_server["extensions"])

    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="churn"))
    rest = httpx.get(node.node.url + "/v2/models/churn").json()
    assert (meta.name, list(meta.versions), meta.platform) == (
        rest["name"],
        rest["versions"],
        rest["platform"],
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["outputs"]
    ]

    assert not stub.ModelReady(pb.ModelReadyRequest(name="churn")).ready  # not loaded yet
    stub.ModelInfer(raw_request(np.zeros((1, 4), np.float32)))
    assert stub.ModelReady(pb.ModelReadyRequest(name="churn")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="churn", version="1.0.0")).ready


def test_errors_carry_the_rest_sentence_and_a_grpc_code(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    publish("churn", "1.0.0")
    node = grpc_node(MODELCACHE_MAX_BATCH="10", MODELCACHE_MAX_BODY_BYTES="65536")
    x = np.zeros((2, 4), np.float32)
    cases = [
        (raw_request(x, model_name="nope"), grpc.StatusCode.NOT_FOUND, "/v2/models/nope/infer"),
        (
            raw_request(x, model_version="9.9.9"),
            grpc.StatusCode.NOT_FOUND,
            "/v2/models/churn/versions/9.9.9/infer",
        ),
        (raw_request(np.zeros((2, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, None),
        (raw_request(np.zeros((11, 4), np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        (raw_request(x, model_name="../etc"), grpc.StatusCode.INVALID_ARGUMENT, None),
    ]
    for request, code, rest_path in cases:
        with pytest.raises(grpc.RpcError) as caught:
            node.stub.ModelInfer(request)
        assert caught.value.code() == code, caught.value.details()
        trailing = dict(caught.value.trailing_metadata())
        assert trailing["modelcache-error-code"] and trailing["x-request-id"]
        if rest_path is not None:  # the same sentence a REST client reads
            body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}]}
            rest = httpx.post(node.node.url + rest_path, json=body).json()
            assert caught.value.details() == rest["error"]
            assert trailing["modelcache-error-code"] == rest["code"]

    mixed = raw_request(x)
    mixed.inputs[0].contents.fp32_contents.extend([0.0] * 8)
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.ModelInfer(mixed)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has contents and raw_input_contents" in caught.value.details()

    # The REST framing header is derived from the message, never taken from the client's metadata.
    framing = (("inference-header-content-length", "3"),)
    assert node.stub.ModelInfer(typed_request(x), metadata=framing).model_version == "1.0.0"

    # Bounded before it is parsed: more than MODELCACHE_MAX_BODY_BYTES in one message.
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.ModelInfer(raw_request(np.zeros((5000, 4), np.float32)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert node.stub.ServerLive(pb.ServerLiveRequest()).live  # and the node goes on


def test_metrics_count_grpc_calls_by_method_path(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    publish("churn", "1.0.0")
    node = grpc_node()
    for _ in range(3):
        node.stub.ModelInfer(raw_request(np.zeros((2, 4), np.float32)))
    with pytest.raises(grpc.RpcError):
        node.stub.ModelInfer(raw_request(np.zeros((2, 4), np.float32), model_name="nope"))
    route = "/inference.GRPCInferenceService/ModelInfer"
    url = node.node.url
    assert metric(url, "modelcache_http_requests_total", route=route, method="POST", status="200") == 3
    assert metric(url, "modelcache_http_requests_total", route=route, method="POST", status="404") == 1
    assert metric(url, "modelcache_predictions_total", model_type="churn") == 6  # rows
    assert metric(url, "modelcache_cache_hits_total", model_type="churn") == 2


def test_repository_index_load_and_unload(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    node = grpc_node()
    stub = node.stub

    def index(ready: bool = False) -> set[tuple[str, str, str]]:
        models = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready)).models
        return {(m.name, m.version, m.state) for m in models}

    assert index() == {("churn", "1.0.0", "UNAVAILABLE"), ("churn", "1.1.0", "UNAVAILABLE")}
    rest = httpx.post(node.node.url + "/v2/repository/index").json()
    assert index() == {(r["name"], r["version"], r["state"]) for r in rest}

    load = pb.RepositoryModelLoadRequest(model_name="churn")
    load.parameters["version"].string_param = "1.0.0"
    for metadata, code in [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer x"),), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(load, metadata=metadata)
        assert caught.value.code() == code
    assert index(ready=True) == set()

    stub.RepositoryModelLoad(load, metadata=ADMIN)
    assert index(ready=True) == {("churn", "1.0.0", "READY")}
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="churn"), metadata=ADMIN)
    assert index(ready=True) == set()
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nope"), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_port_zero_turns_it_off(registry: Registry, publish: PublishFn, node_process: Callable) -> None:
    from tests.helpers import free_port

    port = free_port()
    node = node_process(registry.root, MODELCACHE_GRPC_PORT="0", port=port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port + 50}")
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=1)
    channel.close()
    assert httpx.get(node.url + "/healthz").status_code == 200


def test_the_thread_pool_flavour_answers_the_same(
    registry: Registry, publish: PublishFn, grpc_node: Callable[..., GrpcNode]
) -> None:
    """MODELCACHE_GRPC_WORKERS: grpc's threads take the calls, the node's loop runs them."""
    publish("churn", "1.0.0", seed=3)
    node = grpc_node(MODELCACHE_GRPC_WORKERS="4")
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    response = node.stub.ModelInfer(raw_request(x, id="t"), metadata=(("x-request-id", "rid-1"),))
    got, want = outputs(response), rest_outputs(rest_infer(node, x))
    np.testing.assert_allclose(got["predict_proba"], want["predict_proba"], rtol=1e-6)
    assert response.id == "t"
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.ModelInfer(raw_request(x, model_name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(caught.value.trailing_metadata())["modelcache-error-code"] == "model_not_found"
    assert "unknown model type 'nope'" in caught.value.details()
    _, call = node.stub.ModelInfer.with_call(raw_request(x), metadata=(("x-request-id", "rid-2"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "rid-2"
