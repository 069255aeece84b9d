"""Open Inference Protocol tensors: JSON and binary decoding, encoding of outputs.

Kept apart from the routes so the tensor rules (datatypes, shapes, the binary
tensor data extension) are testable on their own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from node.errors import BatchTooLarge, InvalidInput

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
    """Split a (possibly binary-extended) body into its JSON header and binary tail.

    Every field's type is checked here, so later code can index and hash it safely.
    """
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
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise TensorError('request needs "inputs": a non-empty list of tensor objects')
    for tensor in inputs:
        _parameters(tensor, f"input {str(tensor.get('name', 'input-0'))[:60]!r}")
    outputs = doc.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list)
        or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise TensorError('"outputs" must be a list of {"name": "<output name>"} objects')
    for output in outputs or []:
        _parameters(output, f"output {output['name'][:60]!r}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str | int | float):
        raise TensorError('"id" must be a string')
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=outputs,
        parameters=_parameters(doc, "request"),
        binary=binary,
    )


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise TensorError(f'{where}: "parameters" must be an object')
    return params


def decode_input(request: InferRequest, n_features: int, max_rows: int | None = None) -> np.ndarray:
    """The single input tensor as a float32 matrix [N, F] (NaN for missing).

    `max_rows` refuses an over-limit batch on its declared shape, before any data is decoded.
    """
    if len(request.inputs) != 1:
        raise TensorError(
            f"expected exactly one input tensor of shape [N, {n_features}], got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    name = str(tensor.get("name", "input-0"))[:60]
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise TensorError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise TensorError(f"input {name!r}: shape must be [N, {n_features}], got {shape!r}"[:300])
    if n_features and shape[1] != n_features:
        raise TensorError(f"input {name!r}: the model takes {n_features} features, shape says {shape[1]}")
    if shape[0] == 0:
        raise TensorError(f"input {name!r}: shape {shape} has no rows")
    if max_rows is not None and shape[0] > max_rows:
        raise BatchTooLarge(shape[0], max_rows)
    count = shape[0] * shape[1]
    dtype = DTYPES[datatype]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TensorError(f"input {name!r}: binary_data_size must be a non-negative integer")
        array = _from_binary(request, name, dtype, size, count)
    else:
        array = _from_json(tensor.get("data"), name, datatype, dtype, shape)
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
        x = array.reshape(shape).astype(np.float32)
    if np.isinf(x).any():
        raise TensorError(f"input {name!r}: values must be finite (and within float32's range)")
    return x


_FLOAT_TYPES = frozenset({int, float, type(None)})
_INT_TYPES = frozenset({int, float})


def _from_json(data: Any, name: str, datatype: str, dtype: np.dtype[Any], shape: list[int]) -> np.ndarray:
    """Vectorised: one C-level pass collects the values' types, numpy converts the rest.

    JSON nested by row (`[[..], [..]]`) or flat (`[..]`); any other nesting is refused.
    """
    if not isinstance(data, list):
        raise TensorError(f'input {name!r}: "data" must be a list (flat or nested, row-major)')
    count = shape[0] * shape[1]
    nested = bool(data) and isinstance(data[0], list)
    if nested:
        if len(data) != shape[0] or any(type(r) is not list or len(r) != shape[1] for r in data):
            raise TensorError(f"input {name!r}: nested data does not have shape {shape}")
        values: Any = itertools.chain.from_iterable(data)
    else:
        if len(data) != count:
            raise TensorError(f"input {name!r}: shape needs {count} values, data has {len(data)}")
        values = data
    # Exact types: bool is an int subclass, and must not pass for a number (nor 1 for a BOOL).
    allowed = frozenset({bool}) if datatype == "BOOL" else _FLOAT_TYPES if dtype.kind == "f" else _INT_TYPES
    found = set(map(type, values))
    if not found <= allowed:
        flat = itertools.chain.from_iterable(data) if nested else data
        bad = next(v for v in flat if type(v) not in allowed)
        raise TensorError(f"input {name!r}: {_show(bad)} is not a valid {datatype} value")
    try:
        if dtype.kind == "f":
            # None becomes NaN (missing) in a float array.
            return np.array(data, dtype=np.float64).reshape(-1)
        if dtype.kind == "b":
            return np.array(data, dtype=np.bool_).reshape(-1)
        if float in found:
            return _integral(np.array(data, dtype=np.float64).reshape(-1), name, datatype, dtype)
        return np.array(data, dtype=dtype).reshape(-1)
    except OverflowError:
        raise TensorError(f"input {name!r}: a value is out of range for {datatype}") from None


def _integral(values: np.ndarray, name: str, datatype: str, dtype: np.dtype[Any]) -> np.ndarray:
    """Floats sent for an integer datatype: whole, and within the datatype's range."""
    whole = values == np.floor(values)
    if not whole.all():
        bad = values[~whole][0].item()
        raise TensorError(f"input {name!r}: {bad!r} is not an integer ({datatype})")
    info = np.iinfo(dtype)
    # max + 1 is exact as a float (a power of two); max itself may round up past the range.
    if (values < info.min).any() or (values >= float(info.max) + 1).any():
        raise TensorError(f"input {name!r}: a value is out of range for {datatype}")
    return values.astype(dtype)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
