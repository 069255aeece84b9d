"""Open Inference Protocol (KServe V2) REST routes over the same cache and service.

Version resolution, caching, metrics and fallback are those of /api/v1: the
routes call the same `ModelService`. Errors answer `{"error": ...}` with 400
(bad tensor), 404 (unknown model or version) or 503 (cannot load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from coordinator.errors import InvalidName
from coordinator.versions import normalize_version
from node.errors import InvalidInput
from node.http_common import off_loop_if_big, refused_input
from node.metrics import NodeMetrics
from node.service import ModelService
from node.settings import NodeSettings
from node.tensors import (
    HEADER_LENGTH,
    TensorError,
    binary_outputs,
    decode_input,
    encode_response,
    parse_request,
)

SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "binary_tensor_data"]
PLATFORMS = {"xgboost-ubj": "xgboost", "xgboost-json": "xgboost", "joblib": "sklearn"}

INFER_EXAMPLE = {
    "id": "42",
    "inputs": [
        {
            "name": "input-0",
            "shape": [2, 5],
            "datatype": "FP32",
            "data": [[12, 70.5, 2, 1, 0], [3, 20.0, 5, 0, 2]],
        }
    ],
    "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
}
INFER_DOC = {
    "requestBody": {"content": {"application/json": {"schema": {"type": "object"}, "example": INFER_EXAMPLE}}}
}


def create_v2_router(
    settings: NodeSettings,
    service: ModelService,
    metrics: NodeMetrics,
    require_admin: Callable[[Request], None],
    is_ready: Callable[[], bool],
    json_response: Callable[..., Response],
) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and the protocol extensions it implements."""
        return {"name": "modelcache", "version": SERVER_VERSION, "extensions": EXTENSIONS}

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> Response:
        """200 once warm-up is done, else 503."""
        ok = is_ready()
        return json_response({"ready": ok}, status_code=200 if ok else 503)

    async def _metadata(name: str, version: str | None) -> dict[str, Any]:
        try:
            versions = await asyncio.to_thread(service.registry.versions, name)
            version = version or service.default_version(name)
            meta = await asyncio.to_thread(service.registry.metadata, name, version)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        features = list(meta.features)
        classifier = meta.task is None or "classification" in meta.task
        outputs = [{"name": "predict", "datatype": "INT64" if classifier else "FP64", "shape": [-1]}]
        if classifier:
            outputs.append({"name": "predict_proba", "datatype": "FP32", "shape": [-1, -1]})
        return {
            "name": name,
            "versions": versions,
            "platform": PLATFORMS.get(meta.format, meta.format),
            "inputs": [
                {
                    "name": "input-0",
                    "datatype": "FP32",
                    "shape": [-1, len(features) or -1],
                    **({"parameters": {"feature_names": features}} if features else {}),
                }
            ],
            "outputs": outputs,
            "parameters": {"version": meta.version, "task": meta.task, "sha256": meta.sha256},
        }

    @router.get("/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        """Model metadata from the registry, without loading the model."""
        return await _metadata(name, None)

    @router.get("/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        """Metadata of one version, without loading it."""
        return await _metadata(name, version)

    async def _ready(name: str, version: str | None) -> Response:
        try:
            service.registry.versions(name)
            version = normalize_version(version) if version else service.default_version(name)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        service.registry.metadata(name, version)  # 404 for an unknown version
        loaded = version in service.cached_versions().get(name, [])
        return json_response(
            {"name": name, "version": version, "ready": loaded}, status_code=200 if loaded else 503
        )

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        """200 when the default version is loaded on this node; 503 when it would load on first use."""
        return await _ready(name, None)

    @router.get("/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> Response:
        """200 when this version is loaded on this node."""
        return await _ready(name, version)

    async def _infer(name: str, version: str | None, request: Request) -> Response:
        body = await request.body()
        # A big body is parsed and decoded in a worker thread: the event loop keeps serving.
        parsed = await off_loop_if_big(len(body), parse_request, body, request.headers.get(HEADER_LENGTH))
        try:
            resolved = await service.get(name, version)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        model = resolved.model
        x = await off_loop_if_big(len(body), decode_input, parsed, model.n_features, settings.max_batch)
        started = time.perf_counter()
        try:
            out = model.adapter.predict(x)
        except InvalidInput as exc:
            raise TensorError(str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise TensorError(str(refused_input(f"{name} {resolved.version}", exc))) from None
        metrics.observe_prediction(name, time.perf_counter() - started, len(x))
        available: dict[str, Any] = {"predict": out.labels}
        if out.class_probabilities is not None:
            available["predict_proba"] = out.class_probabilities
        wanted = [o["name"] for o in parsed.outputs] if parsed.outputs else list(available)
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise TensorError(
                f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(available)}"
            )
        header: dict[str, Any] = {"model_name": name, "model_version": resolved.version, "id": parsed.id}
        if parsed.id is None:
            del header["id"]
        params: dict[str, Any] = {"node_id": settings.resolved_node_id, "cached": resolved.cached}
        if resolved.fallback_from:
            params["fallback_from"] = resolved.fallback_from
        header["parameters"] = params
        content, header_len = encode_response(
            header, [(n, available[n]) for n in wanted], binary_outputs(parsed, wanted)
        )
        headers = {"X-Modelcache-Version": resolved.version}
        if header_len is None:
            return Response(content, media_type="application/json", headers=headers)
        headers["Inference-Header-Content-Length"] = str(header_len)
        return Response(content, media_type="application/octet-stream", headers=headers)

    @router.post("/models/{name}/infer", openapi_extra=INFER_DOC)
    async def infer(name: str, request: Request) -> Response:
        """Inference on the default version (pin, else latest stable); outputs predict, predict_proba."""
        return await _infer(name, None, request)

    @router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_DOC)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        """Inference on one exact version."""
        return await _infer(name, version, request)

    # -- model repository extension ------------------------------------------
    @router.post("/repository/index")
    async def repository_index(request: Request) -> list[dict[str, Any]]:
        """Every model version in the registry: READY when loaded on this node, else UNAVAILABLE."""
        body = await request.body()
        only_ready = False
        if body.strip():
            doc = _json_object(body)
            only_ready = bool(doc.get("ready", False))
        cached = service.cached_versions()
        rows = []
        for name in await asyncio.to_thread(service.registry.model_types):
            for version in await asyncio.to_thread(service.registry.versions, name):
                loaded = version in cached.get(name, [])
                if only_ready and not loaded:
                    continue
                rows.append(
                    {
                        "name": name,
                        "version": version,
                        "state": "READY" if loaded else "UNAVAILABLE",
                        "reason": "" if loaded else "not loaded on this node",
                    }
                )
        return rows

    admin = [Depends(require_admin)]

    @router.post("/repository/models/{name}/load", dependencies=admin)
    async def repository_load(name: str, request: Request) -> dict[str, Any]:
        """Load a model's default version (or `parameters.version`) into this node's cache (admin)."""
        body = await request.body()
        params = _json_object(body).get("parameters") if body.strip() else None
        if params is not None and not isinstance(params, dict):
            raise TensorError('"parameters" must be an object')
        version = (params or {}).get("version")
        if version is not None and not isinstance(version, str):
            raise TensorError('"parameters.version" must be a string')
        try:
            loaded = await asyncio.to_thread(service.load, name, version)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        return {"name": name, "version": loaded, "state": "READY"}

    @router.post("/repository/models/{name}/unload", dependencies=admin)
    async def repository_unload(name: str) -> dict[str, Any]:
        """Evict every cached version of a model from this node (admin)."""
        try:
            service.registry.versions(name)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        return {"name": name, "unloaded": service.unload(name), "state": "UNAVAILABLE"}

    return router


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TensorError("request body must be a JSON object")
    return doc
