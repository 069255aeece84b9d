"""The thread-pool flavour of the gRPC server: grpc's own threads, each call run on the node's loop.

`grpc.server` (C-core, a thread pool) takes the calls; each handler thread
submits the async RPC (node.grpc.servicer) to the node's event loop with
`run_coroutine_threadsafe` and waits for it. So the request path stays the
loop's (single-flight loads, the shared micro-batcher), and gRPC's own
per-call work (HTTP/2, protobuf) runs in its threads instead of going
through grpc.aio's poller thread and the loop. Measured against grpc.aio in
benchmarks/bench_grpc.py (`MODELCACHE_GRPC_WORKERS`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc.servicer import SERVICE, InferenceServicer


class Aborted(Exception):
    """What `LoopContext.abort` raises on the loop, for the handler thread to turn into a status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]]) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, tuple(trailing)


class LoopContext:
    """The part of a grpc.aio context the servicer uses, for a call taken by a pool thread."""

    def __init__(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self.metadata = tuple(metadata)
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> Sequence[tuple[str, Any]]:
        return self.metadata

    def set_trailing_metadata(self, trailing: Sequence[tuple[str, str]]) -> None:
        self.trailing = tuple(trailing)

    async def abort(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]] = ()
    ) -> None:
        raise Aborted(code, details, trailing)


def thread_pool_server(
    servicer: InferenceServicer,
    loop: asyncio.AbstractEventLoop,
    workers: int,
    options: list[tuple[str, Any]],
    max_rpcs: int | None = None,
) -> grpc.Server:
    """A `grpc.server` with `workers` threads whose every RPC runs `servicer`'s coroutine on `loop`.

    At most `max_rpcs` calls (default `workers`) are in progress; more are refused.
    """
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _on_loop(getattr(servicer, method.name), loop),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
        options=options,
        # Calls beyond the threads are refused (RESOURCE_EXHAUSTED), not queued without bound.
        maximum_concurrent_rpcs=min(workers, max_rpcs or workers),
    )
    return server


def _on_loop(rpc: Callable[[Any, Any], Any], loop: asyncio.AbstractEventLoop) -> Callable[[Any, Any], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        on_loop = LoopContext(context.invocation_metadata())
        future = asyncio.run_coroutine_threadsafe(rpc(request, on_loop), loop)
        context.add_callback(future.cancel)  # the client went away: stop waiting for it
        try:
            reply = future.result()
        except Aborted as aborted:
            context.set_trailing_metadata(aborted.trailing)
            context.abort(aborted.code, aborted.details)
        context.set_trailing_metadata(on_loop.trailing)
        return reply

    return handle
