"""The KServe V1 data plane: `GET /v1/models/{name}` and `POST /v1/models/{name}:predict`.

Over the same service, cache, batcher and metrics as /api/v1 and V2: the version
is the default one (pin, else latest stable; a canary's share by the
`X-Modelcache-Routing-Key` header). `{"instances": [...]}` takes rows as lists
in feature order or `{name: value}` objects; `{"predictions": [...]}` answers
one label (classifiers) or value (regressors) per row, with `"probabilities"`
beside it for a classifier, rendered as /api/v1/batch_predict renders them.

Errors are KServe's `{"error": "..."}` with our `"code"` beside it; a bad body
is a 400 as in KServe (V2 does the same), unknown models 404, a model that
cannot load 503. `/v1/...` cannot collide with `/api/v1/...`: the fast path
matches whole paths, and a model name cannot contain ':' or '/'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from coordinator.errors import InvalidName
from node import tracing
from node.batching import Batcher
from node.errors import BatchTooLarge, InvalidInput
from node.http.common import FastJSON, json_document, off_loop_if_big, refused_input, require_json
from node.http.fast import JSON, Call, FastRoutes, Reply, document, routing_key
from node.http.observe import Prediction
from node.metrics import NodeMetrics
from node.runtimes import Predictions
from node.service import ModelService
from node.tensors import TensorError

PREDICT_PATH = "/v1/models/{name}:predict"
READY_PATH = "/v1/models/{name}"
TAGS: list[str | Enum] = ["kserve v1"]
_NUMBER = frozenset({int, float, type(None)})

PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"type": "array", "items": {"type": ["number", "null"]}},
                                    {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
                                ]
                            },
                        }
                    },
                },
                "example": {"instances": [[12, 70.5, 2, 1, 0], [3, 20.0, 5, 0, 2]]},
            }
        },
    }
}


class BadRequest(TensorError):
    """A KServe V1 body the node cannot use (HTTP 400, as KServe answers)."""

    code = "invalid_input"


class KServeV1:
    """The two KServe V1 endpoints; `default_version` and `cached_versions` say what is loaded."""

    def __init__(
        self,
        node_id: str,
        max_batch: int,
        service: ModelService,
        metrics: NodeMetrics,
        batcher: Batcher,
        *,
        default_version: Callable[[str], str],
        cached_versions: Callable[[], dict[str, list[str]]],
    ) -> None:
        self.node_id, self.max_batch = node_id, max_batch
        self.service, self.metrics, self.batcher = service, metrics, batcher
        self.default_version, self.cached_versions = default_version, cached_versions

    def register(self, app: FastAPI, fast: FastRoutes) -> None:
        fast.add(PREDICT_PATH, self.predict)
        document(app, PREDICT_PATH, self.predict, tags=TAGS, openapi_extra=PREDICT_DOC)
        app.add_api_route(READY_PATH, self.model_ready, methods=["GET"], tags=TAGS)

    async def model_ready(self, name: str) -> Response:
        """`{"name", "ready"}`: 200 when the model's default version is loaded on this node, else 503.

        A model that is not loaded yet loads on its first prediction (or
        `POST /v2/repository/models/{name}/load`); unknown models are a 404.
        """
        try:
            version = await asyncio.to_thread(self.default_version, name)
        except InvalidName as exc:
            raise BadRequest(str(exc)) from None
        if version in self.cached_versions().get(name, []):
            return FastJSON({"name": name, "ready": True})
        message = f"{name} {version} is not loaded on this node; it loads on its first prediction"
        return FastJSON(
            {"name": name, "ready": False, "error": message, "code": "not_ready"}, status_code=503
        )

    async def predict(self, call: Call) -> Reply:
        """`{"instances": [[..], ..] or [{name: value}, ..]}` -> `{"predictions": [..], "probabilities"?}`."""
        name = call.params["name"]
        content_type = call.headers.get(b"content-type")
        require_json(None if content_type is None else content_type.decode("latin-1"))
        with tracing.stage("parse"):
            instances = await off_loop_if_big(len(call.body), self._instances, call.body)
        try:
            resolved = await self.service.get(name, None, routing_key=routing_key(call))
        except InvalidName as exc:
            raise BadRequest(str(exc)) from None
        call.prediction = Prediction(name, resolved.version, resolved.cached, len(instances))
        started = time.perf_counter()
        try:
            out: Predictions = await self.batcher.predict((name, resolved.version), resolved.model, instances)
        except InvalidInput as exc:  # rows that do not fit the model (count, names, values)
            self.metrics.observe_prediction_error(name, len(instances), resolved.version)
            raise BadRequest(str(exc)) from None
        except (ValueError, TypeError) as exc:
            self.metrics.observe_prediction_error(name, len(instances), resolved.version)
            raise BadRequest(str(refused_input(f"{name} {resolved.version}", exc))) from None
        self.metrics.observe_prediction(name, time.perf_counter() - started, len(instances), resolved.version)
        payload: dict[str, Any] = {"predictions": out.labels.tolist()}
        if out.probabilities is not None:
            probs = out.probabilities
            payload["probabilities"] = (probs[:, 1] if probs.shape[1] == 2 else probs).tolist()
        headers = [(b"content-type", JSON), (b"x-modelcache-version", resolved.version.encode())]
        if resolved.fallback_from:
            headers.append(
                (b"x-modelcache-fallback", f"{resolved.fallback_from} -> {resolved.version}".encode())
            )
        with tracing.stage("serialize"):
            return Reply(orjson.dumps(payload), headers)

    def _instances(self, body: bytes) -> list[Any]:
        """The body's rows, each a list of numbers/null or an object of them; bounded before checked."""
        try:
            doc = json_document(body)
        except InvalidInput as exc:
            raise BadRequest(str(exc)) from None
        rows = doc.get("instances") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise BadRequest(
                'the body needs "instances": a list of rows (lists of numbers, or {name: number})'
            )
        if not rows:
            raise BadRequest('"instances" is empty: send at least one row')
        if len(rows) > self.max_batch:
            raise BatchTooLarge(len(rows), self.max_batch)
        for i, row in enumerate(rows):
            values = row.values() if isinstance(row, dict) else row if isinstance(row, list) else None
            # Exact types: bool is an int subclass, and numpy would turn "1.5" into a number.
            if values is None or not set(map(type, values)) <= _NUMBER:
                raise BadRequest(
                    f"instance {i}: a row is a list of numbers (null for missing) or an object of them"
                )
        return rows
