from __future__ import annotations

import contextlib
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node.errors import BatchTooLarge
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


# -- properties (hypothesis): round trip, and junk only ever raises TensorError ------------------


PROPERTY = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
MATRICES = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20), elements=FLOAT32
)


def as_input(name: str, encoded: bytes, header_len: int | None) -> InferRequest:
    """Turn an encoded output tensor back into a request whose single input it is."""
    head = orjson.loads(encoded[:header_len] if header_len else encoded)
    [out] = head["outputs"]
    tail = encoded[header_len:] if header_len else b""
    body = orjson.dumps({"inputs": [{**out, "name": name}]})
    return parse_request(body + tail, str(len(body)) if tail else None)


@PROPERTY
@given(x=MATRICES, binary=st.booleans())
def test_decode_of_encode_round_trips(x: np.ndarray, binary: bool) -> None:
    encoded, n = encode_response({}, [("x", x)], {"x"} if binary else set())
    decoded = decode_input(as_input("x", encoded, n), x.shape[1])
    np.testing.assert_array_equal(decoded, x)


@PROPERTY
@given(
    x=hnp.arrays(
        np.int64, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.integers(-(2**31), 2**31)
    ),
    nested=st.booleans(),
)
def test_integer_json_round_trips(x: np.ndarray, nested: bool) -> None:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    req = request({"name": "x", "shape": list(x.shape), "datatype": "INT64", "data": data})
    np.testing.assert_array_equal(decode_input(req, x.shape[1]), x.astype(np.float32))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
)
DATATYPES = st.sampled_from(["FP32", "FP64", "INT8", "UINT8", "INT64", "UINT64", "BOOL", "FP16", "BYTES"])
TENSORS = st.fixed_dictionaries(
    {},
    optional={
        "name": JSON,
        "datatype": DATATYPES | JSON,
        "shape": st.lists(st.integers(-2, 6), max_size=3) | JSON,
        "data": st.lists(
            st.integers(-300, 300)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.none()
            | st.booleans(),
            max_size=30,
        )
        | st.lists(
            st.lists(st.integers(-5, 300) | st.floats(-1e40, 1e40) | st.none(), max_size=6), max_size=6
        )
        | JSON,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 64) | JSON})
        | JSON,
    },
)
DOCS = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(TENSORS | JSON, max_size=2) | JSON,
        "outputs": st.lists(st.fixed_dictionaries({"name": JSON | st.text(max_size=8)}) | JSON, max_size=2)
        | JSON,
        "parameters": JSON,
        "id": JSON,
    },
)


@settings(max_examples=1500, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    doc=DOCS | JSON,
    tail=st.binary(max_size=64),
    header=st.none() | st.integers(-5, 300).map(str) | st.text(max_size=4),
)
def test_junk_only_ever_raises_tensor_error(doc: object, tail: bytes, header: str | None) -> None:
    body = json.dumps(doc).encode() + (tail if header is not None else b"")  # json: ints beyond 64 bits
    try:
        req = parse_request(body, header)
        decode_input(req, 4, max_rows=5, feature_names=NAMES)
        binary_outputs(req, ["predict"])
    except (TensorError, BatchTooLarge):
        pass


@PROPERTY
@given(raw=st.binary(max_size=200), header=st.none() | st.integers(-5, 300).map(str))
def test_junk_bytes_only_ever_raise_tensor_error(raw: bytes, header: str | None) -> None:
    with contextlib.suppress(TensorError):
        decode_input(parse_request(raw, header), 4)


NAMES = ("a", "b", "c", "d")
COLUMNS = st.lists(
    TENSORS.flatmap(lambda t: st.sampled_from([*NAMES, "x"]).map(lambda n: {**t, "name": n}) | st.just(t)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(inputs=COLUMNS, tail=st.binary(max_size=64))
def test_junk_columns_only_ever_raise_tensor_error(inputs: list, tail: bytes) -> None:
    head = json.dumps({"inputs": inputs}).encode()
    with contextlib.suppress(TensorError, BatchTooLarge):
        decode_input(parse_request(head + tail, str(len(head))), 4, max_rows=5, feature_names=NAMES)


@PROPERTY
@given(
    x=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 6), st.just(4)), elements=st.floats(-1e6, 1e6, width=32)
    )
)
def test_columns_decode_to_the_matrix_in_feature_order(x: np.ndarray) -> None:
    order = [2, 0, 3, 1]
    inputs = [
        {"name": NAMES[i], "shape": [len(x), 1], "datatype": "FP32", "data": x[:, i].tolist()} for i in order
    ]
    np.testing.assert_array_equal(decode_input(request(*inputs), 4, feature_names=NAMES), x)
