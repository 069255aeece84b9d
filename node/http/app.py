"""The node's ASGI app, assembled from the protocol modules' route tables.

Predictions (v1 and V2 infer) are served by `node.http.fast` in front of
FastAPI; everything else is FastAPI, behind the middleware in
`node.http.middleware`. One `Batcher` per app, closed at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from node.batching import Batcher
from node.http.admin import Admin, Cluster
from node.http.canary import Canaries
from node.http.common import FastJSON, add_schemas, install_error_handlers
from node.http.fast import FastRoutes, NodeApp
from node.http.middleware import BodyLimitMiddleware, InternalErrorMiddleware, NodeHeaderMiddleware
from node.http.observe import ObserveMiddleware, Observer
from node.http.ops import Ops
from node.http.v1 import V1
from node.http.v2 import V2
from node.metrics import NodeMetrics
from node.schemas import BatchBody, BatchRequest, PinRequest, PredictBody, PredictRequest, ReloadRequest
from node.service import ModelService
from node.settings import NodeSettings

log = logging.getLogger("modelcache.api")


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
    batcher = Batcher(
        settings.batch_max_rows,
        metrics,
        threads=settings.predict_threads,
        max_queued_rows=settings.model_queue_max_rows,
    )

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
            batcher.close()
            service.close()  # the idle-TTL sweep thread

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
        found += service.load_health()
        cluster_problems = getattr(cluster, "problems", None)
        if cluster_problems is not None:
            found += cluster_problems()
        return found

    app = NodeApp(
        title="modelcache node",
        version="0.1.0",
        description="Predictions from a local LRU cache of XGBoost/sklearn models; "
        "cluster-wide pins and reloads through Redis.",
        lifespan=lifespan,
        default_response_class=FastJSON,
    )
    # A trailing slash is a 404 in the error shape, not a 307 to whatever Host the client sent.
    app.router.redirect_slashes = False
    # For the FastAPI part; the fast path does the same itself. Added last is outermost:
    # the node header and the request id go on everything, the 500 included, and the
    # metrics and access log see the status the client saw.
    observer = Observer(metrics, settings.access_log)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(NodeHeaderMiddleware, node_id=node_id)
    app.add_middleware(ObserveMiddleware, observer=observer)
    install_error_handlers(app, settings.registry)
    add_schemas(app, [PredictRequest, PredictBody, BatchRequest, BatchBody, ReloadRequest, PinRequest])

    fast = FastRoutes(node_id, settings.max_body_bytes, settings.registry, observer)
    admin = Admin(settings, service, cluster)
    V1(settings, service, metrics, batcher).register(app, fast)
    admin.register(app)
    Canaries(cluster, service).register(app, admin.require_admin)
    Ops(settings, service, metrics, problems).register(app)
    V2(settings, service, metrics, batcher, lambda: not problems()).register(app, fast, admin.require_admin)
    app.fast = fast
    app.state.service = service
    app.state.batcher = batcher
    app.state.readiness = state
    app.state.problems = problems  # readiness for the other doors (node.grpc)
    return app
