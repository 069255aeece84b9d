from __future__ import annotations

import numpy as np
import orjson
import pytest

from node.tensors import (
    InferRequest,
    TensorError,
    binary_outputs,
    decode_input,
    encode_response,
    parse_request,
)


def request(*inputs: dict, **extra) -> InferRequest:
    return parse_request(orjson.dumps({"inputs": list(inputs), **extra}), None)


def test_flat_and_nested_data_decode_alike() -> None:
    flat = request({"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, None]})
    nested = request({"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3, None]]})
    a, b = decode_input(flat, 2), decode_input(nested, 2)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.isnan(a[1, 1])


def test_bool_and_int_datatypes() -> None:
    x = decode_input(request({"name": "x", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]}), 2)
    assert x.tolist() == [[1.0, 0.0]]
    with pytest.raises(TensorError, match="not a valid BOOL"):
        decode_input(request({"name": "x", "shape": [1, 2], "datatype": "BOOL", "data": [1, 0]}), 2)
    with pytest.raises(TensorError, match="out of range"):
        decode_input(request({"name": "x", "shape": [1, 1], "datatype": "INT8", "data": [300]}), 1)


def test_binary_input_and_output() -> None:
    x = np.arange(6, dtype="<f4").reshape(3, 2)
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [3, 2], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    req = parse_request(head + x.tobytes(), str(len(head)))
    np.testing.assert_array_equal(decode_input(req, 2), x)
    assert binary_outputs(req, ["predict", "predict_proba"]) == {"predict", "predict_proba"}
    body, n = encode_response({"model_name": "m"}, [("predict", np.array([1, 0, 1]))], {"predict"})
    meta = orjson.loads(body[:n])
    assert meta["outputs"][0] == {
        "name": "predict",
        "shape": [3],
        "datatype": "INT64",
        "parameters": {"binary_data_size": 24},
    }
    assert np.frombuffer(body[n:], "<i8").tolist() == [1, 0, 1]


def test_binary_size_must_match_shape() -> None:
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
            ]
        }
    )
    with pytest.raises(TensorError, match="binary_data_size 4 != 2 x 4 bytes"):
        decode_input(parse_request(head + b"\0" * 4, str(len(head))), 2)
    with pytest.raises(TensorError, match="does not fit"):
        parse_request(head, str(len(head) + 10))


def test_json_outputs_and_nan() -> None:
    body, n = encode_response({"id": "1"}, [("p", np.array([[0.5, np.nan]], dtype=np.float32))], set())
    assert n is None
    assert orjson.loads(body)["outputs"] == [
        {"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.5, None]}
    ]
