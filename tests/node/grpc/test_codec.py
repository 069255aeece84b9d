"""node.grpc.codec: gRPC messages to the V2 REST wire format and back (pure, no server)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from node.grpc import codec
from node.grpc import grpc_predict_v2_pb2 as pb
from node.tensors import TensorError, decode_input, encode_response, parse_request

Tensor = pb.ModelInferRequest.InferInputTensor


def typed(datatype: str, shape: list[int], **contents: object) -> pb.ModelInferRequest:
    values = pb.InferTensorContents(**contents)
    return pb.ModelInferRequest(inputs=[Tensor(datatype=datatype, shape=shape, contents=values)])


def raw(shape: list[int], *data: bytes, inputs: int = 1) -> pb.ModelInferRequest:
    tensors = [Tensor(datatype="FP32", shape=shape) for _ in range(inputs)]
    return pb.ModelInferRequest(inputs=tensors, raw_input_contents=list(data))


def _decoded(request: pb.ModelInferRequest, n_features: int = 3) -> np.ndarray:
    body, header_length, _ = codec.rest_body(request)
    return decode_input(parse_request(body, header_length), n_features)


def test_raw_and_typed_inputs_decode_to_the_same_matrix() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pb.ModelInferRequest(
        inputs=[Tensor(datatype="FP32", shape=[2, 3])], raw_input_contents=[x.tobytes()]
    )
    contents = pb.InferTensorContents(fp32_contents=x.ravel().tolist())
    typed = pb.ModelInferRequest(inputs=[Tensor(datatype="FP32", shape=[2, 3], contents=contents)])
    ints = pb.ModelInferRequest(
        inputs=[
            Tensor(datatype="INT64", shape=[2, 3], contents=pb.InferTensorContents(int64_contents=range(6)))
        ]
    )
    for request in (raw, typed, ints):
        np.testing.assert_array_equal(_decoded(request), x)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (  # typed values in the wrong field for the datatype
            pb.ModelInferRequest(
                inputs=[
                    Tensor(datatype="FP32", shape=[1, 3], contents=pb.InferTensorContents(int64_contents=[1]))
                ]
            ),
            "go in contents.fp32_contents",
        ),
        (  # one raw entry per input
            pb.ModelInferRequest(
                inputs=[Tensor(datatype="FP32", shape=[1, 3]), Tensor()], raw_input_contents=[b""]
            ),
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (  # raw bytes that do not fit the shape
            pb.ModelInferRequest(
                inputs=[Tensor(datatype="FP32", shape=[1, 3])], raw_input_contents=[b"\0" * 8]
            ),
            "binary_data_size 8",
        ),
        (  # an integer out of the datatype's range: the REST decoder's check
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        datatype="INT8",
                        shape=[1, 3],
                        contents=pb.InferTensorContents(int_contents=[1, 2, 300]),
                    )
                ]
            ),
            "out of range for INT8",
        ),
        (
            pb.ModelInferRequest(inputs=[Tensor(datatype="BYTES", shape=[1, 3])]),
            "BYTES tensors are not model inputs",
        ),
        (pb.ModelInferRequest(inputs=[Tensor(datatype="FP8", shape=[1, 3])]), "is not one of"),
    ],
)
def test_bad_tensors_are_refused_with_a_sentence(request_: pb.ModelInferRequest, words: str) -> None:
    with pytest.raises(TensorError, match=words):
        _decoded(request_)


def test_the_client_cannot_set_the_binary_framing() -> None:
    """binary_data_size is derived from the message, never taken from the client's parameters."""
    tensor = Tensor(datatype="FP32", shape=[1, 3], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3]))
    tensor.parameters["binary_data_size"].int64_param = 12
    body, header_length, raw = codec.rest_body(pb.ModelInferRequest(inputs=[tensor]))
    assert (header_length, raw) == (None, False)
    assert "binary_data_size" not in orjson.dumps(orjson.loads(body)["inputs"][0]).decode()


def test_parameters_round_trip_and_routing_key_stays_out_of_the_body() -> None:
    request = pb.ModelInferRequest(
        inputs=[Tensor(datatype="FP32", shape=[1, 3])], raw_input_contents=[b"\0" * 12]
    )
    request.parameters["routing_key"].string_param = "user-7"
    request.parameters["flag"].bool_param = True
    request.parameters["n"].int64_param = 3
    body, header_length, _ = codec.rest_body(request)
    header = orjson.loads(body[: int(header_length or 0)])
    assert header["parameters"] == {"flag": True, "n": 3, "binary_data_output": True}
    assert codec.parameters_dict(request.parameters)["routing_key"] == "user-7"


@pytest.mark.parametrize("binary", [True, False])
def test_a_rest_reply_becomes_the_same_tensors(binary: bool) -> None:
    labels = np.array([1, 0], dtype=np.int64)
    proba = np.array([[0.25, 0.75], [np.nan, 0.5]], dtype=np.float32)
    header = {
        "model_name": "m",
        "model_version": "1.0.0",
        "id": "x",
        "parameters": {"node_id": "n", "cached": True},
    }
    outputs = [("predict", labels), ("predict_proba", proba)]
    body, header_length = encode_response(header, outputs, {"predict", "predict_proba"} if binary else set())
    response = codec.infer_response(body, header_length, binary)
    assert (response.model_name, response.model_version, response.id) == ("m", "1.0.0", "x")
    assert response.parameters["cached"].bool_param and response.parameters["node_id"].string_param == "n"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("predict", "INT64", [2]),
        ("predict_proba", "FP32", [2, 2]),
    ]
    if binary:
        got_labels = np.frombuffer(response.raw_output_contents[0], "<i8")
        got_proba = np.frombuffer(response.raw_output_contents[1], "<f4").reshape(2, 2)
    else:
        assert not response.raw_output_contents
        got_labels = np.array(response.outputs[0].contents.int64_contents)
        got_proba = np.array(response.outputs[1].contents.fp32_contents, np.float32).reshape(2, 2)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_proba, proba)  # NaN included (null on the REST side)
