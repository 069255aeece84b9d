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


def decode_input(
    request: InferRequest, n_features: int, max_rows: int | None = None, feature_names: Sequence[str] = ()
) -> np.ndarray:
    """The request's features as a float32 matrix [N, F] (NaN for missing).

    Either one `[N, F]` tensor, or one tensor per feature column named by the
    model's `feature_names` (shape `[N]` or `[N, 1]`, MLServer's pandas codec),
    assembled in feature order. `max_rows` refuses an over-limit batch on its
    declared shape, before any data is decoded.
    """
    inputs = request.inputs
    # A lone input named by a feature is a column (of a many-feature model: the others are
    # missing, and the error says which); any other lone input is the [N, F] matrix.
    first = inputs[0]
    lone_column = first.get("name") in feature_names and (_rank(first) == 1 or n_features != 1)
    if len(inputs) > 1 or lone_column:
        return _decode_columns(request, feature_names, max_rows)
    tensor = inputs[0]
    name = _name(tensor)
    datatype = _datatype(tensor, name)
    shape = tensor.get("shape")
    if not _dims(shape, 2):
        raise TensorError(f"input {name!r}: shape must be [N, {n_features}], got {shape!r}"[:300])
    if n_features and shape[1] != n_features:
        raise TensorError(f"input {name!r}: the model takes {n_features} features, shape says {shape[1]}")
    _check_rows(name, shape, max_rows)
    array, _ = _tensor_values(request, tensor, name, datatype, shape, 0)
    return _finite(array.reshape(shape), name)


def _name(tensor: dict[str, Any]) -> str:
    return str(tensor.get("name", "input-0"))[:60]


def _rank(tensor: dict[str, Any]) -> int | None:
    shape = tensor.get("shape")
    return len(shape) if isinstance(shape, list) else None


def _dims(shape: Any, rank: int) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) == rank
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    )


def _datatype(tensor: dict[str, Any], name: str) -> str:
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise TensorError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    return datatype


def _check_rows(name: str, shape: list[int], max_rows: int | None) -> None:
    if shape[0] == 0:
        raise TensorError(f"input {name!r}: shape {shape} has no rows")
    if max_rows is not None and shape[0] > max_rows:
        raise BatchTooLarge(shape[0], max_rows)


def _tensor_values(
    request: InferRequest, tensor: dict[str, Any], name: str, datatype: str, shape: list[int], offset: int
) -> tuple[np.ndarray, int]:
    """The tensor's values (flat), and the binary offset after it (binary tensors follow in input order)."""
    dtype = DTYPES[datatype]
    count = shape[0] * shape[1]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return _from_json(tensor.get("data"), name, datatype, dtype, shape), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TensorError(f"input {name!r}: binary_data_size must be a non-negative integer")
    return _from_binary(request, name, dtype, size, count, offset), offset + size


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
        x = array.astype(np.float32)
    if np.isinf(x).any():
        raise TensorError(f"input {name!r}: values must be finite (and within float32's range)")
    return x


def _decode_columns(request: InferRequest, feature_names: Sequence[str], max_rows: int | None) -> np.ndarray:
    """One tensor per feature column, named by the feature names, as a matrix in feature order."""
    if not feature_names:
        raise TensorError(
            f"got {len(request.inputs)} input tensors, but this model has no feature names in its "
            "metadata to match them to: send one input of shape [N, features]"
        )
    by_name: dict[str, dict[str, Any]] = {}
    for tensor in request.inputs:
        name = tensor.get("name")
        if not isinstance(name, str):
            raise TensorError('with one input per feature, every input needs its feature "name"')
        if name in by_name:
            raise TensorError(f"input {name[:60]!r} is sent twice")
        by_name[name] = tensor
    unknown = [n[:60] for n in by_name if n not in feature_names]
    missing = [n for n in feature_names if n not in by_name]
    if unknown or missing:
        parts = [f"unknown input(s) {', '.join(unknown[:10])}"] if unknown else []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing[:10])}")
        expected = ", ".join(feature_names)
        raise TensorError(f"{'; '.join(parts)}: send one input per feature ({expected})"[:600])
    rows: int | None = None
    offset, columns = 0, {}
    # Binary tensors follow the JSON header in the order of the request's inputs.
    for name, tensor in by_name.items():
        datatype = _datatype(tensor, name)
        shape = tensor.get("shape")
        if not (_dims(shape, 1) or (_dims(shape, 2) and shape[1] == 1)):
            raise TensorError(
                f"input {name[:60]!r}: a feature column has shape [N] or [N, 1], got {shape!r}"[:300]
            )
        if rows is None:
            rows = shape[0]
            _check_rows(name, [rows, 1], max_rows)
        elif shape[0] != rows:
            raise TensorError(f"input {name[:60]!r} has {shape[0]} rows, the first input has {rows}")
        values, offset = _tensor_values(request, tensor, name[:60], datatype, [rows, 1], offset)
        columns[name] = _finite(values, name[:60])
    return np.stack([columns[n] for n in feature_names], axis=1)


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


def _from_binary(
    request: InferRequest, name: str, dtype: np.dtype[Any], size: int, count: int, offset: int = 0
) -> np.ndarray:
    if size != count * dtype.itemsize:
        raise TensorError(f"input {name!r}: binary_data_size {size} != {count} x {dtype.itemsize} bytes")
    available = len(request.binary) - offset
    if available < size:
        raise TensorError(f"input {name!r}: body has {max(available, 0)} binary bytes left, needs {size}")
    return np.frombuffer(request.binary[offset : offset + size], dtype=dtype)


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
