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

from fastapi import FastAPI

from node import tracing
from node.batching import Batcher
from node.http.admin import Admin
from node.http.canary import Canaries
from node.http.common import FastJSON, add_schemas, install_error_handlers
from node.http.fast import FastRoutes, NodeApp
from node.http.kserve_v1 import KServeV1
from node.http.middleware import BodyLimitMiddleware, InternalErrorMiddleware, NodeHeaderMiddleware
from node.http.observe import ObserveMiddleware, Observer
from node.http.ops import Ops
from node.http.v1 import V1
from node.http.v2 import V2
from node.parts import NodeParts
from node.runtimes import import_libraries
from node.schemas import BatchBody, BatchRequest, PinRequest, PredictBody, PredictRequest, ReloadRequest
from node.settings import NodeSettings

log = logging.getLogger("modelcache.api")


def create_app(
    settings: NodeSettings, parts: NodeParts, after_start: Callable[[], object] | None = None
) -> FastAPI:
    """Build the node's ASGI app over its parts (built by node.app); each route table gets what it uses.

    `after_start` runs once the node is ready and the model libraries are imported (or failed
    to): the end of start-up, when what is alive is what stays alive.
    """
    node_id = settings.resolved_node_id
    metrics, cluster, warmup = parts.metrics, parts.sync, parts.warmup
    state = {"ready": False}
    batcher = Batcher(
        settings.batch_max_rows,
        metrics,
        threads=settings.predict_threads,
        max_queued_rows=settings.model_queue_max_rows,
        heavy_predict_s=settings.heavy_predict_ms / 1e3,
        heavy_sched=settings.heavy_predict_sched,
        heavy_nice=settings.heavy_predict_nice,
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
            parts.close()  # the idle-TTL sweep thread
            tracing.shutdown()  # flush the spans still queued (no-op with tracing off)

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
        # Ready first: the model libraries a first request may need are imported afterwards.
        started = time.perf_counter()
        try:
            imported = await asyncio.to_thread(import_libraries)
            took = time.perf_counter() - started
            log.info("model libraries imported: %s in %.2fs", ", ".join(imported), took)
        except Exception:  # a broken library fails its own models' loads, not the node
            log.exception("importing the model libraries failed; each model's load will retry it")
        if after_start is not None:
            after_start()

    def problems() -> list[str]:
        """Why this node cannot answer predictions now; empty when it can (docs/design.md, Readiness).

        Only this node's own state: a shared dependency (Redis, the registry, the load backlog)
        degrading must not take every node out of rotation at once.
        """
        return [] if state["ready"] else [f"node {node_id} is still warming up"]

    def degraded() -> list[str]:
        """What is wrong while the node still serves: in /readyz's body, metrics and alerts."""
        found = parts.loads.health()
        saving = parts.restart.problem() if parts.restart is not None else None
        if saving:
            found.append(saving)
        if cluster is not None:
            found += cluster.problems()
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
    admin = Admin(node_id, settings.admin_token, parts.reloads, parts.control)
    models = dict(registry=parts.registry, resolver=parts.resolver, loads=parts.loads)
    V1(node_id, settings.max_batch, parts.service, metrics, batcher, **models).register(app, fast)
    admin.register(app)
    Canaries(parts.control, parts.reloads).register(app, admin.require_admin)
    Ops(node_id, parts.loads, metrics, problems, degraded).register(app)
    v2 = V2(node_id, settings.max_batch, parts.service, metrics, batcher, lambda: not problems(), **models)
    v2.register(app, fast, admin.require_admin)
    KServeV1(
        node_id,
        settings.max_batch,
        parts.service,
        metrics,
        batcher,
        default_version=parts.resolver.default_version,
        cached_versions=parts.loads.cached_versions,
    ).register(app, fast)
    app.fast = fast
    app.state.service = parts.service
    app.state.batcher = batcher
    app.state.readiness = state
    app.state.problems = problems  # readiness for the other doors (node.grpc)
    app.state.v2 = v2  # the gRPC door decodes, predicts and encodes through the same handler
    return app
