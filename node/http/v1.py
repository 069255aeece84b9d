"""The v1 protocol: predictions (on the fast path) and the model listing, over `ModelService`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI
from pydantic import BaseModel

from coordinator.registry import Registry
from node import tracing
from node.batching import Batcher
from node.errors import BatchTooLarge, InvalidInput
from node.http.common import body_doc, parse_body, refused_input, require_json
from node.http.fast import JSON, Call, FastRoutes, Reply, document, routing_key
from node.http.observe import Prediction
from node.loads import Loads
from node.metrics import NodeMetrics
from node.resolver import Resolver
from node.runtimes import Predictions, Row
from node.schemas import (
    ERRORS,
    BatchBody,
    BatchRequest,
    BatchResponse,
    PredictBody,
    PredictRequest,
    PredictResponse,
)
from node.service import ModelService, Resolved
from node.views import models_view

M = TypeVar("M", bound=BaseModel)


class V1:
    """The v1 endpoints: each a short method that parses, delegates and renders."""

    def __init__(
        self,
        node_id: str,
        max_batch: int,
        service: ModelService,
        metrics: NodeMetrics,
        batcher: Batcher,
        *,
        registry: Registry,
        resolver: Resolver,
        loads: Loads,
    ) -> None:
        self.node_id, self.max_batch = node_id, max_batch
        self.service, self.metrics, self.batcher = service, metrics, batcher
        self.registry, self.resolver, self.loads = registry, resolver, loads

    def register(self, app: FastAPI, fast: FastRoutes) -> None:
        predict = {"responses": ERRORS, "tags": ["predict"]}
        for path, handler, request, response in (
            ("/api/v1/predict", self.predict, PredictRequest, PredictResponse),
            ("/api/v1/batch_predict", self.batch_predict, BatchRequest, BatchResponse),
            ("/api/v1/models/{model_type}/predict", self.predict_in_path, PredictBody, PredictResponse),
            ("/api/v1/models/{model_type}/batch_predict", self.batch_in_path, BatchBody, BatchResponse),
        ):
            fast.add(path, handler)
            document(app, path, handler, response_model=response, openapi_extra=body_doc(request), **predict)
        app.add_api_route("/api/v1/models", self.list_models, methods=["GET"], tags=["models"])
        app.add_api_route(
            "/api/v1/models/{model_type}/versions/{version}",
            self.model_metadata,
            methods=["GET"],
            responses=ERRORS,
            tags=["models"],
        )

    # -- predictions (fast path) ----------------------------------------------
    async def predict(self, call: Call) -> Reply:
        """Predict one row. The version is the request's, else the pin, else the latest stable."""
        body = await _body(call, PredictRequest)
        return await self._predict(call, body.model_type, body, routing_key(call, body.routing_key))

    async def batch_predict(self, call: Call) -> Reply:
        """Predict many rows with one model in one call (cheaper per row than /predict)."""
        body = await _body(call, BatchRequest, self.max_batch)
        return await self._batch(call, body.model_type, body, routing_key(call, body.routing_key))

    async def predict_in_path(self, call: Call) -> Reply:
        """As /api/v1/predict, with the model in the path so a load balancer can route by it."""
        body = await _body(call, PredictBody)
        return await self._predict(call, call.params["model_type"], body, routing_key(call, body.routing_key))

    async def batch_in_path(self, call: Call) -> Reply:
        """As /api/v1/batch_predict, with the model in the path."""
        body = await _body(call, BatchBody, self.max_batch)
        return await self._batch(call, call.params["model_type"], body, routing_key(call, body.routing_key))

    async def _predict(self, call: Call, model_type: str, body: PredictBody, key: str | None = None) -> Reply:
        resolved = await self.service.get(model_type, body.version, routing_key=key)
        out = await self._run(call, model_type, resolved, [body.features])
        payload: dict[str, Any] = {
            "model_type": model_type,
            "version": resolved.version,
            "prediction": out.labels[:1].tolist()[0],
            "node_id": self.node_id,
            "cached": resolved.cached,
        }
        if out.probabilities is not None:
            payload["probability"] = _probabilities(out.probabilities)[:1].tolist()[0]
        return _reply(payload, resolved)

    async def _batch(self, call: Call, model_type: str, body: BatchBody, key: str | None = None) -> Reply:
        if len(body.instances) > self.max_batch:  # parse_body checked already; kept for direct calls
            raise BatchTooLarge(len(body.instances), self.max_batch)
        if not body.instances:
            raise InvalidInput("instances is empty: send at least one row")
        resolved = await self.service.get(model_type, body.version, routing_key=key)
        out = await self._run(call, model_type, resolved, body.instances)
        payload: dict[str, Any] = {
            "model_type": model_type,
            "version": resolved.version,
            "predictions": out.labels.tolist(),
            "node_id": self.node_id,
            "cached": resolved.cached,
        }
        if out.probabilities is not None:
            payload["probabilities"] = _probabilities(out.probabilities).tolist()
        return _reply(payload, resolved)

    async def _run(self, call: Call, model_type: str, resolved: Resolved, rows: list[Row]) -> Predictions:
        """Predict through the batcher; the model's own refusal of the input is a 422, not a 500."""
        call.prediction = Prediction(model_type, resolved.version, resolved.cached, len(rows))
        started = time.perf_counter()
        try:
            out = await self.batcher.predict((model_type, resolved.version), resolved.model, rows)
        except (ValueError, TypeError) as exc:
            self.metrics.observe_prediction_error(model_type, len(rows), resolved.version)
            raise refused_input(f"{model_type} {resolved.version}", exc) from None
        except Exception:
            self.metrics.observe_prediction_error(model_type, len(rows), resolved.version)
            raise
        self.metrics.observe_prediction(
            model_type, time.perf_counter() - started, len(rows), resolved.version
        )
        return out

    # -- models ---------------------------------------------------------------
    async def list_models(self) -> dict[str, Any]:
        """Every model type: versions, latest stable, pin, served version, what this node caches."""
        return {"node_id": self.node_id, "models": await asyncio.to_thread(self._models)}

    def _models(self) -> list[dict[str, Any]]:
        """Every model type; one whose files cannot be read is listed with an `error`."""
        resolver = self.resolver
        return models_view(
            self.registry.scan(), resolver.pins, resolver.serving(), self.loads.cached_versions()
        )

    async def model_metadata(self, model_type: str, version: str) -> dict[str, Any]:
        """A version's metadata (features, metrics, checksum) without loading the model."""
        meta = await asyncio.to_thread(self.registry.metadata, model_type, version)
        cached = meta.version in self.loads.cached_versions().get(model_type, [])
        return {**meta.to_dict(), "cached_on_node": cached}


async def _body(call: Call, model: type[M], max_rows: int | None = None) -> M:
    """The v1 body as `model` (a JSON object; a declared non-JSON type is a 415)."""
    with tracing.stage("parse"):
        content_type = call.headers.get(b"content-type")
        require_json(None if content_type is None else content_type.decode("latin-1"))
        return await parse_body(call.body, model, max_rows)


def _probabilities(matrix: np.ndarray) -> np.ndarray:
    """v1's rendering of the class probabilities: a binary classifier's positive class, else every class."""
    return matrix[:, 1] if matrix.shape[1] == 2 else matrix


def _reply(payload: dict[str, Any], resolved: Resolved) -> Reply:
    headers = [(b"content-type", JSON), (b"x-modelcache-version", resolved.version.encode())]
    if resolved.fallback_from:
        payload["fallback_from"] = resolved.fallback_from
        fallback = f"{resolved.fallback_from} -> {resolved.version}"
        headers.append((b"x-modelcache-fallback", fallback.encode()))
    with tracing.stage("serialize"):
        return Reply(orjson.dumps(payload), headers)
