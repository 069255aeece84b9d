"""The node's gRPC server: `grpc.aio` on the node's own event loop, started and stopped with the app.

Same loop as uvicorn, not a thread pool beside it: the request path (the
service's single-flight loads, the micro-batcher that coalesces concurrent
predicts) is asyncio code on that loop, so gRPC requests join the same batches
as REST ones, and no request pays a hop between threads. Measured in
benchmarks/bench_grpc.py (see its docstring).

Bounds as on the REST door (node.grpc.limits): calls in progress, connections,
streams per connection, connection set-up and idle time; a message larger than
MODELCACHE_MAX_BODY_BYTES is refused by gRPC itself (RESOURCE_EXHAUSTED) before
it is parsed; batches are bounded by MODELCACHE_MAX_BATCH in the shared decoder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from node.grpc.limits import max_concurrent_rpcs, server_options
from node.grpc.servicer import InferenceServicer
from node.http.observe import Observer
from node.http.v2 import V2
from node.parts import NodeParts
from node.settings import NodeSettings

log = logging.getLogger("modelcache.grpc")

GRACE_S = 5.0
"""On shutdown, in-flight RPCs get this long to finish; new ones are refused at once."""


class GrpcServer:
    """The Open Inference Protocol over gRPC on `settings.resolved_grpc_port` (None: off)."""

    def __init__(
        self,
        settings: NodeSettings,
        parts: NodeParts,
        v2: V2,
        is_ready: Callable[[], bool],
    ) -> None:
        self.host, self.port = settings.host, settings.resolved_grpc_port
        # A port derived from the HTTP port may be taken by something else: then the node serves
        # REST alone (logged). A port set explicitly that cannot be bound stops the node.
        self.required = settings.grpc_port is not None
        self.options = server_options(settings)
        self.max_rpcs = max_concurrent_rpcs(settings)
        self.workers = settings.grpc_workers
        self.servicer = InferenceServicer(
            v2,
            parts.service,
            parts.loads,
            parts.registry,
            Observer(parts.metrics, settings.access_log),
            is_ready,
            settings.admin_token,
            settings.registry,
        )
        self._server: Any = None

    async def start(self) -> None:
        """Bind and serve on the running loop (see `required` for a port that cannot be bound)."""
        if self.port is None:
            return
        options = self.options
        if self.workers:
            from node.grpc.bridge import thread_pool_server

            loop = asyncio.get_running_loop()
            rpcs = min(self.workers, self.max_rpcs)
            server: Any = thread_pool_server(self.servicer, loop, self.workers, options, rpcs)
        else:
            # Calls beyond the bound are refused at once (RESOURCE_EXHAUSTED), not queued.
            server = grpc.aio.server(options=options, maximum_concurrent_rpcs=self.max_rpcs)
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            message = f"gRPC cannot listen on {address} (MODELCACHE_GRPC_PORT): {exc}"
            if self.required:
                raise RuntimeError(message) from None
            log.error("%s; serving REST only (set MODELCACHE_GRPC_PORT to a free port, or 0)", message)
            return
        if self.workers:
            server.start()
        else:
            await server.start()
        self._server = server
        flavour = f"{self.workers} threads" if self.workers else "grpc.aio"
        log.info("gRPC (Open Inference Protocol) listening on %s (%s)", address, flavour)

    async def stop(self) -> None:
        if self._server is None:
            return
        if self.workers:
            # Its threads wait on this loop: wait for them off the loop, or they never finish.
            stopped = self._server.stop(GRACE_S)
            await asyncio.to_thread(stopped.wait)
        else:
            await self._server.stop(GRACE_S)
        self._server = None

    def serve_with(self, app: Any) -> None:
        """Run beside `app` (Starlette): start once its lifespan started, stop before that ends."""
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
            async with inner(asgi_app) as state:
                await self.start()
                try:
                    yield state
                finally:
                    await self.stop()

        app.router.lifespan_context = lifespan
