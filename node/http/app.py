"""The HTTP layer: thin routes that delegate to `ModelService` (and the cluster, when present).

Status codes live here and only here: `ERROR_STATUS` maps each error class.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.errors import BatchTooLarge, InvalidInput
from node.http_common import (
    AdminError,
    FastJSON,
    NotAvailable,
    add_schemas,
    body_doc,
    error_response,
    install_error_handlers,
    read_body,
    refused_input,
)
from node.metrics import NodeMetrics
from node.middleware import BodyLimitMiddleware, InternalErrorMiddleware, NodeHeaderMiddleware
from node.runtime import LoadedModel, Predictions, Row
from node.schemas import (
    ADMIN_ERRORS,
    ERRORS,
    MAX_TIMEOUT_S,
    BatchBody,
    BatchRequest,
    BatchResponse,
    PinRequest,
    PredictBody,
    PredictRequest,
    PredictResponse,
    ReloadRequest,
)
from node.service import ModelService, Resolved
from node.settings import NodeSettings
from node.v2 import create_v2_router

log = logging.getLogger("modelcache.api")

# Query parameters get the same bounds as the bodies' `timeout_s` (NaN, inf, <= 0 are refused).
TimeoutQuery = Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]


def predict_rows(model: LoadedModel, rows: list[Row], label: str) -> Predictions:
    """Predict; the model's own refusal of the input is a 422, not a 500."""
    try:
        # A value beyond float32 becomes inf, which to_matrix refuses with a 422; the cast's
        # overflow warning is expected, not an error (it is one under filterwarnings=error).
        with np.errstate(over="ignore"):
            return model.predict(rows)
    except (ValueError, TypeError) as exc:
        raise refused_input(label, exc) from None


class Cluster(Protocol):
    """What the API needs from cluster coordination (node.sync implements it)."""

    async def pins(self) -> dict[str, str]: ...
    async def set_pin(
        self, model_type: str, version: str, wait: bool, timeout_s: float
    ) -> dict[str, Any]: ...
    async def unpin(self, model_type: str, wait: bool, timeout_s: float) -> dict[str, Any]: ...
    async def reload(
        self, model_type: str | None, version: str | None, wait: bool, timeout_s: float
    ) -> dict[str, Any]: ...
    async def describe(self) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def create_app(
    settings: NodeSettings,
    service: ModelService,
    metrics: NodeMetrics,
    *,
    cluster: Cluster | None = None,
    warmup: Callable[[], Any] | None = None,
) -> FastAPI:
    """Build the node's ASGI app from its collaborators."""
    node_id = settings.resolved_node_id
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if cluster is not None:
            await cluster.start()
        task = asyncio.create_task(_warm())
        try:
            yield
        finally:
            task.cancel()
            if cluster is not None:
                await cluster.stop()

    async def _warm() -> None:
        started = time.perf_counter()
        try:
            if warmup is not None:
                loaded = await asyncio.to_thread(warmup)
                log.info("warm-up loaded %s in %.2fs", loaded or "nothing", time.perf_counter() - started)
        except Exception:
            # A node that cannot warm still serves (models load on use); never stay unready.
            log.exception("warm-up failed; serving with a cold cache")
        state["ready"] = True

    def problems() -> list[str]:
        """Why this node should not take traffic now; empty when it should."""
        found = [] if state["ready"] else [f"node {node_id} is still warming up"]
        return found + service.load_health()

    app = FastAPI(
        title="modelcache node",
        version="0.1.0",
        description="Predictions from a local LRU cache of XGBoost/sklearn models; "
        "cluster-wide pins and reloads through Redis.",
        lifespan=lifespan,
        default_response_class=FastJSON,
    )
    # Added last is outermost: the node header goes on everything, the 500 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(NodeHeaderMiddleware, node_id=node_id)
    install_error_handlers(app, settings.registry)
    add_schemas(app, [PredictRequest, PredictBody, BatchRequest, BatchBody, ReloadRequest, PinRequest])

    def require_admin(request: Request) -> None:
        if not settings.admin_token:
            raise AdminError(403, "admin_disabled", "admin API disabled: set MODELCACHE_ADMIN_TOKEN")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AdminError(401, "unauthorized", "admin route: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
            raise AdminError(403, "forbidden", "admin token is not valid")

    def need_cluster() -> Cluster:
        if cluster is None:
            raise NotAvailable("this node runs without Redis (MODELCACHE_REDIS_URL unset): no cluster")
        return cluster

    admin = [Depends(require_admin)]

    # -- predictions --------------------------------------------------------
    async def _predict(model_type: str, body: PredictBody) -> Response:
        resolved = await service.get(model_type, body.version)
        started = time.perf_counter()
        out = predict_rows(resolved.model, [body.features], f"{model_type} {resolved.version}")
        metrics.observe_prediction(model_type, time.perf_counter() - started, 1)
        payload: dict[str, Any] = {
            "model_type": model_type,
            "version": resolved.version,
            "prediction": out.labels[0],
            "node_id": node_id,
            "cached": resolved.cached,
        }
        if out.probabilities is not None:
            payload["probability"] = out.probabilities[0]
        return _respond(payload, resolved)

    async def _batch(model_type: str, body: BatchBody) -> Response:
        if len(body.instances) > settings.max_batch:  # read_body checked already; kept for direct calls
            raise BatchTooLarge(len(body.instances), settings.max_batch)
        if not body.instances:
            raise InvalidInput("instances is empty: send at least one row")
        resolved = await service.get(model_type, body.version)
        started = time.perf_counter()
        out = predict_rows(resolved.model, body.instances, f"{model_type} {resolved.version}")
        metrics.observe_prediction(model_type, time.perf_counter() - started, len(body.instances))
        payload: dict[str, Any] = {
            "model_type": model_type,
            "version": resolved.version,
            "predictions": out.labels,
            "node_id": node_id,
            "cached": resolved.cached,
        }
        if out.probabilities is not None:
            payload["probabilities"] = out.probabilities
        return _respond(payload, resolved)

    def _respond(payload: dict[str, Any], resolved: Resolved) -> Response:
        headers = {"X-Modelcache-Version": resolved.version}
        if resolved.fallback_from:
            payload["fallback_from"] = resolved.fallback_from
            headers["X-Modelcache-Fallback"] = f"{resolved.fallback_from} -> {resolved.version}"
        return FastJSON(payload, headers=headers)

    # Bodies are read with `read_body`, not declared as parameters: FastAPI would parse and
    # validate them on the event loop, before admin checks, and before counting rows.
    max_rows = settings.max_batch

    @app.post(
        "/api/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["predict"],
        openapi_extra=body_doc(PredictRequest),
    )
    async def predict(request: Request) -> Response:
        """Predict one row. The version is the request's, else the pin, else the latest stable."""
        body = await read_body(request, PredictRequest)
        return await _predict(body.model_type, body)

    @app.post(
        "/api/v1/batch_predict",
        response_model=BatchResponse,
        responses=ERRORS,
        tags=["predict"],
        openapi_extra=body_doc(BatchRequest),
    )
    async def batch_predict(request: Request) -> Response:
        """Predict many rows with one model in one call (cheaper per row than /predict)."""
        body = await read_body(request, BatchRequest, max_rows)
        return await _batch(body.model_type, body)

    @app.post(
        "/api/v1/models/{model_type}/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["predict"],
        openapi_extra=body_doc(PredictBody),
    )
    async def predict_in_path(model_type: str, request: Request) -> Response:
        """As /api/v1/predict, with the model in the path so a load balancer can route by it."""
        return await _predict(model_type, await read_body(request, PredictBody))

    @app.post(
        "/api/v1/models/{model_type}/batch_predict",
        response_model=BatchResponse,
        responses=ERRORS,
        tags=["predict"],
        openapi_extra=body_doc(BatchBody),
    )
    async def batch_in_path(model_type: str, request: Request) -> Response:
        """As /api/v1/batch_predict, with the model in the path."""
        return await _batch(model_type, await read_body(request, BatchBody, max_rows))

    # -- models -------------------------------------------------------------
    @app.get("/api/v1/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        """Every model type: versions, latest stable, pin, served version, what this node caches."""
        return {"node_id": node_id, "models": await asyncio.to_thread(service.list_models)}

    @app.get("/api/v1/models/{model_type}/versions/{version}", responses=ERRORS, tags=["models"])
    async def model_metadata(model_type: str, version: str) -> dict[str, Any]:
        """A version's metadata (features, metrics, checksum) without loading the model."""
        meta = await asyncio.to_thread(service.registry.metadata, model_type, version)
        cached = meta.version in service.cached_versions().get(model_type, [])
        return {**meta.to_dict(), "cached_on_node": cached}

    @app.post(
        "/api/v1/models/reload",
        dependencies=admin,
        responses=ADMIN_ERRORS,
        tags=["admin"],
        openapi_extra=body_doc(ReloadRequest),
    )
    async def reload(request: Request) -> dict[str, Any]:
        """Reload without downtime: the new model loads beside the old, then swaps in.

        `scope=node` reloads this node only; `scope=cluster` reaches every node through Redis.
        """
        body = await read_body(request, ReloadRequest)  # after the admin check: no parsing for strangers
        if body.scope == "cluster":
            return await need_cluster().reload(body.model_type, body.version, body.wait, body.timeout_s)
        outcomes = await asyncio.to_thread(service.reload, body.model_type, body.version, source="api")
        return {
            "scope": "node",
            "acks": [{"node_id": node_id, **o.to_dict()} for o in outcomes],
            "ok": all(o.outcome == "ok" for o in outcomes),
        }

    # -- pins and cluster ---------------------------------------------------
    @app.get("/api/v1/pins", tags=["cluster"])
    async def get_pins() -> dict[str, Any]:
        """Version pins in force (cluster-wide when Redis is configured)."""
        pins = await cluster.pins() if cluster is not None else service.pins
        return {"pins": pins}

    @app.put(
        "/api/v1/pins/{model_type}",
        dependencies=admin,
        responses=ADMIN_ERRORS,
        tags=["cluster"],
        openapi_extra=body_doc(PinRequest),
    )
    async def put_pin(model_type: str, request: Request) -> dict[str, Any]:
        """Pin a model type to a version on every node (refused if the version does not exist)."""
        body = await read_body(request, PinRequest)
        return await need_cluster().set_pin(model_type, body.version, body.wait, body.timeout_s)

    @app.delete("/api/v1/pins/{model_type}", dependencies=admin, responses=ADMIN_ERRORS, tags=["cluster"])
    async def delete_pin(
        model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """Remove a pin: every node goes back to the latest stable version."""
        return await need_cluster().unpin(model_type, wait, timeout_s)

    @app.get("/api/v1/cluster", tags=["cluster"])
    async def cluster_view() -> dict[str, Any]:
        """Live nodes with their cached models and stats, pins and reload generations."""
        return await need_cluster().describe()

    # -- operations ---------------------------------------------------------
    @app.get("/api/v1/cache/stats", tags=["operations"])
    async def cache_stats() -> dict[str, Any]:
        """Hits, misses, rates, evictions, loads, bytes and per-model entries of this node."""
        return {"node_id": node_id, **service.stats()}

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "node_id": node_id}

    @app.get("/readyz", tags=["operations"], responses={503: ERRORS[503]})
    async def readyz() -> Response:
        """Readiness: 503 until warm-up is done, and while model loading is wedged."""
        found = problems()
        if found:
            return error_response(503, "not_ready", "; ".join(found))
        return FastJSON({"status": "ready", "node_id": node_id})

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this node's metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(
        create_v2_router(settings, service, metrics, require_admin, lambda: not problems(), FastJSON)
    )
    app.state.service = service
    app.state.readiness = state
    return app
