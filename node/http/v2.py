"""Open Inference Protocol (KServe V2) REST routes over the same cache and service.

Version resolution, caching, metrics and fallback are those of /api/v1: the
routes call the same `ModelService`. Errors answer `{"error": ...}` with 400
(bad tensor), 404 (unknown model or version) or 503 (cannot load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from coordinator.errors import InvalidName
from coordinator.registry import Registry
from coordinator.versions import normalize_version
from node import tracing
from node.batching import Batcher
from node.errors import InvalidInput
from node.http.common import FastJSON, off_loop_if_big, refused_input
from node.http.fast import JSON, Call, FastRoutes, Reply, document, routing_key
from node.http.observe import Prediction
from node.loads import Loads
from node.metrics import NodeMetrics
from node.resolver import Resolver
from node.runtimes import platform
from node.service import ModelService
from node.tensors import (
    TensorError,
    binary_outputs,
    decode_input,
    encode_response,
    parse_request,
)

SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "binary_tensor_data"]

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
HEADER_LENGTH = b"inference-header-content-length"
INFER_DOC = {
    "requestBody": {"content": {"application/json": {"schema": {"type": "object"}, "example": INFER_EXAMPLE}}}
}


class V2:
    """The V2 endpoints: inference on the fast path, metadata, health and the repository on FastAPI."""

    def __init__(
        self,
        node_id: str,
        max_batch: int,
        service: ModelService,
        metrics: NodeMetrics,
        batcher: Batcher,
        is_ready: Callable[[], bool],
        *,
        registry: Registry,
        resolver: Resolver,
        loads: Loads,
    ) -> None:
        self.node_id, self.max_batch = node_id, max_batch
        self.service, self.metrics, self.batcher, self.is_ready = service, metrics, batcher, is_ready
        self.registry, self.resolver, self.loads = registry, resolver, loads

    def register(self, app: FastAPI, fast: FastRoutes, admin: Callable[..., None]) -> None:
        tags: list[str | Enum] = ["open inference protocol (v2)"]
        for path, handler in (
            ("/v2/models/{name}/infer", self.infer),
            ("/v2/models/{name}/versions/{version}/infer", self.infer_version),
        ):
            fast.add(path, handler)
            document(app, path, handler, tags=tags, openapi_extra=INFER_DOC)
        router = APIRouter(prefix="/v2", tags=tags)
        router.add_api_route("", self.server_metadata, methods=["GET"])
        router.add_api_route("/health/live", self.live, methods=["GET"])
        router.add_api_route("/health/ready", self.ready, methods=["GET"])
        router.add_api_route("/models/{name}", self.model_metadata, methods=["GET"])
        router.add_api_route("/models/{name}/versions/{version}", self.version_metadata, methods=["GET"])
        router.add_api_route("/models/{name}/ready", self.model_ready, methods=["GET"])
        router.add_api_route("/models/{name}/versions/{version}/ready", self.version_ready, methods=["GET"])
        router.add_api_route("/repository/index", self.repository_index, methods=["POST"])
        guarded = [Depends(admin)]
        router.add_api_route(
            "/repository/models/{name}/load", self.repository_load, methods=["POST"], dependencies=guarded
        )
        router.add_api_route(
            "/repository/models/{name}/unload", self.repository_unload, methods=["POST"], dependencies=guarded
        )
        app.include_router(router)

    async def server_metadata(self) -> dict[str, Any]:
        """Server name, version and the protocol extensions it implements."""
        return {"name": "modelcache", "version": SERVER_VERSION, "extensions": EXTENSIONS}

    async def live(self) -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    async def ready(self) -> Response:
        """200 once warm-up is done (and loading and cluster sync are healthy), else 503."""
        ok = self.is_ready()
        return FastJSON({"ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """Model metadata from the registry, without loading the model."""
        return await self._metadata(name, None)

    async def version_metadata(self, name: str, version: str) -> dict[str, Any]:
        """Metadata of one version, without loading it."""
        return await self._metadata(name, version)

    async def _metadata(self, name: str, version: str | None) -> dict[str, Any]:
        try:
            versions = await asyncio.to_thread(self.registry.versions, name)
            version = version or self.resolver.default_version(name)
            meta = await asyncio.to_thread(self.registry.metadata, name, version)
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
            "platform": platform(meta.format),
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

    async def model_ready(self, name: str) -> Response:
        """200 when the default version is loaded on this node; 503 when it would load on first use."""
        return await self._ready(name, None)

    async def version_ready(self, name: str, version: str) -> Response:
        """200 when this version is loaded on this node."""
        return await self._ready(name, version)

    async def _ready(self, name: str, version: str | None) -> Response:
        try:
            self.registry.versions(name)
            version = normalize_version(version) if version else self.resolver.default_version(name)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        self.registry.metadata(name, version)  # 404 for an unknown version
        loaded = version in self.loads.cached_versions().get(name, [])
        return FastJSON(
            {"name": name, "version": version, "ready": loaded}, status_code=200 if loaded else 503
        )

    # -- inference (fast path) ----------------------------------------------------
    async def infer(self, call: Call) -> Reply:
        """Inference on the default version (pin, else latest stable); outputs predict, predict_proba."""
        return await self._infer(call.params["name"], None, call)

    async def infer_version(self, call: Call) -> Reply:
        """Inference on one exact version."""
        return await self._infer(call.params["name"], call.params["version"], call)

    async def _infer(self, name: str, version: str | None, call: Call) -> Reply:
        body = call.body
        raw_length = call.headers.get(HEADER_LENGTH)
        header_length = None if raw_length is None else raw_length.decode("latin-1")
        # A big body is parsed and decoded in a worker thread: the event loop keeps serving.
        with tracing.stage("parse"):
            parsed = await off_loop_if_big(len(body), parse_request, body, header_length)
        try:
            resolved = await self.service.get(name, version, routing_key=routing_key(call))
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        model = resolved.model
        with tracing.stage("decode"):
            x = await off_loop_if_big(
                len(body), decode_input, parsed, model.n_features, self.max_batch, model.feature_names
            )
        call.prediction = Prediction(name, resolved.version, resolved.cached, len(x))
        started = time.perf_counter()
        try:
            out = await self.batcher.predict((name, resolved.version), model, x)
        except InvalidInput as exc:
            raise TensorError(str(exc)) from None
        except (ValueError, TypeError) as exc:
            self.metrics.observe_prediction_error(name, len(x), resolved.version)
            raise TensorError(str(refused_input(f"{name} {resolved.version}", exc))) from None
        self.metrics.observe_prediction(name, time.perf_counter() - started, len(x), resolved.version)
        labels = out.labels
        if labels.dtype.kind == "f":  # regression values leave as FP64, as the metadata announces
            labels = labels.astype(np.float64)
        available: dict[str, Any] = {"predict": labels}
        if out.probabilities is not None:
            available["predict_proba"] = out.probabilities
        wanted = [o["name"] for o in parsed.outputs] if parsed.outputs else list(available)
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise TensorError(
                f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(available)}"
            )
        header: dict[str, Any] = {"model_name": name, "model_version": resolved.version}
        if parsed.id is not None:
            header["id"] = parsed.id
        params: dict[str, Any] = {"node_id": self.node_id, "cached": resolved.cached}
        if resolved.fallback_from:
            params["fallback_from"] = resolved.fallback_from
        header["parameters"] = params
        with tracing.stage("serialize"):
            content, header_len = encode_response(
                header, [(n, available[n]) for n in wanted], binary_outputs(parsed, wanted)
            )
        headers = [(b"x-modelcache-version", resolved.version.encode())]
        if header_len is None:
            return Reply(content, [(b"content-type", JSON), *headers])
        headers.append((b"inference-header-content-length", str(header_len).encode()))
        return Reply(content, [(b"content-type", b"application/octet-stream"), *headers])

    # -- model repository extension ------------------------------------------------
    async def repository_index(self, request: Request) -> list[dict[str, Any]]:
        """Every model version in the registry: READY when loaded on this node, else UNAVAILABLE."""
        body = await request.body()
        only_ready = bool(_json_object(body).get("ready", False)) if body.strip() else False
        cached = self.loads.cached_versions()
        registry = self.registry
        rows = []
        for name in await asyncio.to_thread(registry.model_types):
            for version in await asyncio.to_thread(registry.versions, name):
                loaded = version in cached.get(name, [])
                if only_ready and not loaded:
                    continue
                state, reason = ("READY", "") if loaded else ("UNAVAILABLE", "not loaded on this node")
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
        return rows

    async def repository_load(self, name: str, request: Request) -> dict[str, Any]:
        """Load a model's default version (or `parameters.version`) into this node's cache (admin)."""
        body = await request.body()
        params = _json_object(body).get("parameters") if body.strip() else None
        if params is not None and not isinstance(params, dict):
            raise TensorError('"parameters" must be an object')
        version = (params or {}).get("version")
        if version is not None and not isinstance(version, str):
            raise TensorError('"parameters.version" must be a string')
        try:
            loaded = await asyncio.to_thread(self.service.load, name, version)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        return {"name": name, "version": loaded, "state": "READY"}

    async def repository_unload(self, name: str) -> dict[str, Any]:
        """Evict every cached version of a model from this node (admin)."""
        try:
            self.registry.versions(name)
        except InvalidName as exc:
            raise TensorError(str(exc)) from None
        return {"name": name, "unloaded": self.loads.unload(name), "state": "UNAVAILABLE"}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TensorError("request body must be a JSON object")
    return doc
