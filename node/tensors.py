"""Open Inference Protocol tensors: JSON and binary decoding, encoding of outputs.

Kept apart from the routes so the tensor rules (datatypes, shapes, the binary
tensor data extension) are testable on their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from node.errors import InvalidInput

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
HEADER_LENGTH = "inference-header-content-length"


class TensorError(InvalidInput):
    """A request tensor the protocol does not allow (HTTP 400)."""

    code = "bad_tensor"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]] | None
    parameters: dict[str, Any]
    binary: bytes


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Split a (possibly binary-extended) body into its JSON header and binary tail."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise TensorError("Inference-Header-Content-Length must be an integer") from None
        if not 0 < n <= len(body):
            raise TensorError(f"Inference-Header-Content-Length {n} does not fit a {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise TensorError('request needs "inputs": a non-empty list of tensors')
    outputs = doc.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs)
    ):
        raise TensorError('"outputs" must be a list of {"name": ...} objects')
    request_id = doc.get("id")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=doc["inputs"],
        outputs=outputs,
        parameters=doc.get("parameters") or {},
        binary=binary,
    )


def decode_input(request: InferRequest, n_features: int) -> np.ndarray:
    """The single input tensor as a float32 matrix [N, F] (NaN for missing)."""
    if len(request.inputs) != 1:
        raise TensorError(
            f"expected exactly one input tensor of shape [N, {n_features}], got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    name = tensor.get("name", "input-0")
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        raise TensorError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise TensorError(f"input {name!r}: shape must be [N, {n_features}], got {shape!r}")
    if n_features and shape[1] != n_features:
        raise TensorError(f"input {name!r}: the model takes {n_features} features, shape says {shape[1]}")
    if shape[0] == 0:
        raise TensorError(f"input {name!r}: shape {shape} has no rows")
    count = shape[0] * shape[1]
    dtype = DTYPES[datatype]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        array = _from_binary(request, name, dtype, int(size), count)
    else:
        array = _from_json(tensor.get("data"), name, datatype, dtype, shape)
    x = array.reshape(shape).astype(np.float32)
    if np.isinf(x).any():
        raise TensorError(f"input {name!r}: values must be finite")
    return x


def _from_json(data: Any, name: str, datatype: str, dtype: np.dtype[Any], shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise TensorError(f'input {name!r}: "data" must be a list (flat or nested, row-major)')
    count = shape[0] * shape[1]
    if (
        data
        and isinstance(data[0], list)
        and (len(data) != shape[0] or any(not isinstance(r, list) or len(r) != shape[1] for r in data))
    ):
        raise TensorError(f"input {name!r}: nested data does not have shape {shape}")
    flat = _flatten(data)
    if len(flat) != count:
        raise TensorError(f"input {name!r}: shape needs {count} values, data has {len(flat)}")
    for v in flat:
        ok = (
            isinstance(v, bool)
            if datatype == "BOOL"
            else (v is None and dtype.kind == "f") or (isinstance(v, int | float) and not isinstance(v, bool))
        )
        if not ok:
            raise TensorError(f"input {name!r}: {v!r} is not a valid {datatype} value")
        if dtype.kind in "iu" and isinstance(v, float) and not v.is_integer():
            raise TensorError(f"input {name!r}: {v!r} is not an integer ({datatype})")
    try:
        return np.array(flat, dtype=np.float64 if dtype.kind == "f" else dtype)
    except OverflowError:
        raise TensorError(f"input {name!r}: a value is out of range for {datatype}") from None


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _from_binary(request: InferRequest, name: str, dtype: np.dtype[Any], size: int, count: int) -> np.ndarray:
    if size != count * dtype.itemsize:
        raise TensorError(f"input {name!r}: binary_data_size {size} != {count} x {dtype.itemsize} bytes")
    if len(request.binary) < size:
        raise TensorError(f"input {name!r}: body has {len(request.binary)} binary bytes, needs {size}")
    return np.frombuffer(request.binary[:size], dtype=dtype)


def output_tensor(name: str, values: np.ndarray | Sequence[Any]) -> tuple[str, np.ndarray]:
    array = np.asarray(values)
    if array.dtype.kind in "US" or array.dtype == object:
        return "BYTES", array
    if array.dtype.kind == "b":
        return "BOOL", array
    if array.dtype.kind in "iu":
        return "INT64", array.astype("<i8")
    if array.dtype == np.float32:
        return "FP32", array.astype("<f4")
    return "FP64", array.astype("<f8")


def encode_response(
    header: dict[str, Any], outputs: list[tuple[str, np.ndarray]], binary_names: set[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it."""
    tensors, tail = [], []
    for name, array in outputs:
        datatype, typed = output_tensor(name, array)
        tensor: dict[str, Any] = {"name": name, "shape": list(typed.shape), "datatype": datatype}
        if name in binary_names and datatype != "BYTES":
            raw = np.ascontiguousarray(typed).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            tensor["data"] = [_json_value(v) for v in typed.reshape(-1).tolist()]
        tensors.append(tensor)
    head = orjson.dumps({**header, "outputs": tensors})
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def binary_outputs(request: InferRequest, names: Sequence[str]) -> set[str]:
    """Outputs to send as binary: asked per output, or for all with binary_data_output."""
    default = bool(request.parameters.get("binary_data_output", False))
    asked: Mapping[str, Any] = {o["name"]: (o.get("parameters") or {}) for o in request.outputs or []}
    return {n for n in names if asked.get(n, {}).get("binary_data", default)}
