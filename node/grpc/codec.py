"""Between the gRPC messages and the V2 REST handler's wire format.

A `ModelInferRequest` becomes the body the V2 REST route takes (a JSON header,
with the binary tensor data extension when the request carries
`raw_input_contents`), and that route's reply becomes a `ModelInferResponse`.
So inference over gRPC runs the very code inference over REST runs
(`node.http.v2.V2.infer`: tensor checks, version resolution, canary, cache,
fallback, batching, metrics); only the framing differs. The JSON header costs
a few microseconds; the tensor bytes are never turned into JSON on the raw
path (tritonclient's default).

Typed `contents` go in as the JSON `data` list, so their values get the same
type and range checks as a REST body; a request with typed contents gets typed
contents back, one with raw inputs gets `raw_output_contents` (as Triton does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from node.grpc import grpc_predict_v2_pb2 as pb
from node.tensors import TensorError

# The InferTensorContents field each datatype's values travel in (the protocol's table).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
BINARY_SIZE = "binary_data_size"  # the REST extension's per-tensor parameter: ours to set, never the client's
ROUTING_KEY = "routing_key"


def parameter_value(param: pb.InferParameter | pb.ModelRepositoryParameter) -> Any:
    """The value an InferParameter (or a repository parameter) holds; None when unset."""
    choice = param.WhichOneof("parameter_choice")
    return None if choice is None else getattr(param, choice)


def parameters_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def set_parameter(params: Any, key: str, value: Any) -> None:
    """Store a JSON value into an InferParameter map entry (bool before int: bool is an int)."""
    entry = params[key]
    if isinstance(value, bool):
        entry.bool_param = value
    elif isinstance(value, int):
        entry.int64_param = value
    elif isinstance(value, float):
        entry.double_param = value
    else:
        entry.string_param = str(value)


def rest_body(request: pb.ModelInferRequest) -> tuple[bytes, str | None, bool]:
    """The V2 REST body for `request`: (body, Inference-Header-Content-Length or None, raw?)."""
    raw = len(request.raw_input_contents) > 0
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for "
            f"{len(request.inputs)} inputs; send one per input, in order"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        name = tensor.name or f"input-{i}"
        params = {k: v for k, v in parameters_dict(tensor.parameters).items() if k != BINARY_SIZE}
        doc: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(f"input {name[:60]!r}: has contents and raw_input_contents; send one")
            params[BINARY_SIZE] = len(request.raw_input_contents[i])
        else:
            doc["data"] = _typed_values(tensor, name)
        if params:
            doc["parameters"] = params
        inputs.append(doc)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": o.name} for o in request.outputs]
    params = {k: v for k, v in parameters_dict(request.parameters).items() if k != ROUTING_KEY}
    params["binary_data_output"] = raw
    header["parameters"] = params
    head = orjson.dumps(header)
    if not raw:
        return head, None, False
    return head + b"".join(request.raw_input_contents), str(len(head)), True


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor, name: str) -> list[Any]:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        # Left for the tensor decoder, which names the datatypes it takes.
        return []
    if field == "bytes_contents":
        raise TensorError(f"input {name[:60]!r}: BYTES tensors are not model inputs here; send numbers")
    values = list(getattr(tensor.contents, field))
    others = [f for f in set(CONTENTS_FIELD.values()) - {field} if len(getattr(tensor.contents, f)) > 0]
    if others:
        raise TensorError(
            f"input {name[:60]!r}: a {tensor.datatype} tensor's values go in contents.{field}, "
            f"not {', '.join(sorted(others))}"
        )
    return values


def infer_response(body: bytes, header_length: int | None, raw: bool) -> pb.ModelInferResponse:
    """The V2 REST route's reply as a ModelInferResponse (raw outputs when the request was raw)."""
    head = body if header_length is None else body[:header_length]
    tail = memoryview(body)[len(head) :]
    doc = orjson.loads(head)
    response = pb.ModelInferResponse(
        model_name=doc["model_name"], model_version=doc["model_version"], id=doc.get("id", "")
    )
    for key, value in (doc.get("parameters") or {}).items():
        if value is not None:
            set_parameter(response.parameters, key, value)
    offset = 0
    for out in doc["outputs"]:
        tensor = response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        size = (out.get("parameters") or {}).get(BINARY_SIZE)
        if size is not None:
            response.raw_output_contents.append(bytes(tail[offset : offset + size]))
            offset += size
            continue
        values = out["data"]
        if raw:
            # A raw response carries every output raw; only a BYTES output can get here.
            response.raw_output_contents.append(_length_prefixed(values))
            continue
        field = CONTENTS_FIELD[out["datatype"]]
        if out["datatype"] in ("FP32", "FP64"):
            values = [math.nan if v is None else v for v in values]  # NaN left REST as null
        elif field == "bytes_contents":
            values = [str(v).encode() for v in values]
        getattr(tensor.contents, field).extend(values)
    return response


def _length_prefixed(values: list[Any]) -> bytes:
    """BYTES elements as raw contents: each a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in values:
        data = str(value).encode()
        parts.append(len(data).to_bytes(4, "little") + data)
    return b"".join(parts)
