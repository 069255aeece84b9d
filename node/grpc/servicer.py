"""`inference.GRPCInferenceService`: the Open Inference Protocol's RPCs over the node's V2 handler.

Each RPC delegates to what the V2 REST routes use (`node.http.v2.V2`, the
service, the registry): inference is the REST route itself, fed through
`node.grpc.codec`; metadata and readiness are the REST answers, reshaped. So a
gRPC client and a REST client get the same versions, the same cache, the same
canary and fallback, and the same error sentences (status codes per
`node.grpc.status`).

Per RPC, as the REST door does per request: the request id (`x-request-id`
metadata, echoed in the trailing metadata), `modelcache_http_requests_total`
and `modelcache_http_request_seconds` with `route` = the gRPC method path
(`/inference.GRPCInferenceService/ModelInfer`) and `method` POST (what gRPC is
on the wire), `status` the HTTP status the REST route would have answered,
the access log line, and with tracing on a server span continuing the
`traceparent` metadata (node.tracing).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from coordinator.errors import InvalidName, ModelCacheError
from coordinator.registry import AnyRegistry
from node import tracing
from node.grpc import codec
from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from node.grpc.status import ERROR_CODE_KEY, grpc_code
from node.http.common import INTERNAL_ERROR, AdminError, map_error
from node.http.fast import ROUTING_KEY, Call
from node.http.observe import Observer, request_id
from node.http.v2 import V2
from node.loads import Loads
from node.logs import bind_request_id, reset_request_id
from node.service import ModelService
from node.tensors import HEADER_LENGTH, TensorError

log = logging.getLogger("modelcache.grpc")

SERVICE = "inference.GRPCInferenceService"
PROBES = frozenset({"ServerLive", "ServerReady"})
"""Health probes: not traced (as /healthz and /readyz are not)."""
Reply = TypeVar("Reply")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs; built by `node.grpc.server.GrpcServer` from the node's V2 handler and service."""

    def __init__(
        self,
        v2: V2,
        service: ModelService,
        loads: Loads,
        registry: AnyRegistry,
        observer: Observer,
        is_ready: Callable[[], bool],
        admin_token: str,
        registry_root: Path,
    ) -> None:
        self.v2, self.service, self.observer = v2, service, observer
        self.loads, self.registry = loads, registry
        self.is_ready, self.admin_token, self.registry_root = is_ready, admin_token, registry_root

    # -- health and metadata --------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return await self._serve("ServerLive", context, self._live)

    async def _live(self, _call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return await self._serve("ServerReady", context, self._ready)

    async def _ready(self, _call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        async def run(_call: Call) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**await self.v2.server_metadata())

        return await self._serve("ServerMetadata", context, run)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def run(_call: Call) -> pb.ModelReadyResponse:
            if request.version:
                answer = await self.v2.version_ready(request.name, request.version)
            else:
                answer = await self.v2.model_ready(request.name)
            return pb.ModelReadyResponse(ready=bool(orjson.loads(answer.body)["ready"]))

        return await self._serve("ModelReady", context, run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def run(_call: Call) -> pb.ModelMetadataResponse:
            if request.version:
                doc = await self.v2.version_metadata(request.name, request.version)
            else:
                doc = await self.v2.model_metadata(request.name)
            return pb.ModelMetadataResponse(
                name=doc["name"],
                versions=doc["versions"],
                platform=doc["platform"],
                inputs=[_tensor_metadata(t) for t in doc["inputs"]],
                outputs=[_tensor_metadata(t) for t in doc["outputs"]],
            )

        return await self._serve("ModelMetadata", context, run)

    # -- inference ----------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def run(call: Call) -> pb.ModelInferResponse:
            body, header_length, raw = codec.rest_body(request)
            call.body = body
            # Ours to set from the message's framing: a client's metadata of that name is ignored.
            call.headers.pop(HEADER_LENGTH.encode(), None)
            if header_length is not None:
                call.headers[HEADER_LENGTH.encode()] = header_length.encode()
            key = codec.parameters_dict(request.parameters).get(codec.ROUTING_KEY)
            if key is not None:  # a request parameter wins over the metadata, as the v1 body does
                call.headers[ROUTING_KEY] = str(key).encode("latin-1", "replace")
            call.params["name"] = request.model_name
            if request.model_version:
                call.params["version"] = request.model_version
                reply = await self.v2.infer_version(call)
            else:
                reply = await self.v2.infer(call)
            length = dict(reply.headers).get(HEADER_LENGTH.encode())
            return codec.infer_response(reply.body, None if length is None else int(length), raw)

        return await self._serve("ModelInfer", context, run)

    # -- model repository extension ----------------------------------------------
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        async def run(_call: Call) -> pb.RepositoryIndexResponse:
            cached = self.loads.cached_versions()
            registry = self.registry
            response = pb.RepositoryIndexResponse()
            for name in await asyncio.to_thread(registry.model_types):
                for version in await asyncio.to_thread(registry.versions, name):
                    loaded = version in cached.get(name, [])
                    if request.ready and not loaded:
                        continue
                    state, reason = ("READY", "") if loaded else ("UNAVAILABLE", "not loaded on this node")
                    response.models.add(name=name, version=version, state=state, reason=reason)
            return response

        return await self._serve("RepositoryIndex", context, run)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def run(call: Call) -> pb.RepositoryModelLoadResponse:
            self._require_admin(call)
            version = codec.parameters_dict(request.parameters).get("version")
            if version is not None and not isinstance(version, str):
                raise TensorError('parameter "version" must be a string')
            try:
                await asyncio.to_thread(self.service.load, request.model_name, version)
            except InvalidName as exc:
                raise TensorError(str(exc)) from None
            return pb.RepositoryModelLoadResponse()

        return await self._serve("RepositoryModelLoad", context, run)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def run(call: Call) -> pb.RepositoryModelUnloadResponse:
            self._require_admin(call)
            try:
                self.registry.versions(request.model_name)
            except InvalidName as exc:
                raise TensorError(str(exc)) from None
            self.loads.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._serve("RepositoryModelUnload", context, run)

    def _require_admin(self, call: Call) -> None:
        """The admin routes' refusals, with their sentences, for the `authorization` metadata."""
        if not self.admin_token:
            raise AdminError(403, "admin_disabled", "admin API disabled: set MODELCACHE_ADMIN_TOKEN")
        scheme, _, token = call.headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AdminError(401, "unauthorized", "admin call: send 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(token.strip().encode(), self.admin_token.encode()):
            raise AdminError(403, "forbidden", "admin token is not valid")

    # -- what every RPC does --------------------------------------------------------
    async def _serve(self, method: str, context: Any, handler: Callable[[Call], Awaitable[Reply]]) -> Reply:
        """Run `handler` with the request id bound; record it; map its errors onto gRPC statuses."""
        started = time.perf_counter()
        headers = _headers(context)
        rid = request_id(headers.get(b"x-request-id"))
        token = bind_request_id(rid)
        call = Call(params={}, body=b"", headers=headers)
        route = f"/{SERVICE}/{method}"
        # The `traceparent` metadata is honoured as the header is on the REST door.
        traced = self._trace(route, headers, rid) if self.observer.traced and method not in PROBES else None
        status = 499  # the client went away
        try:
            try:
                reply = await handler(call)
            except ModelCacheError as exc:
                status, body, extra = map_error(exc, self.registry_root, "POST", route)
                message, code = body["error"], body["code"]
            except asyncio.CancelledError:
                raise  # the client went away: nothing to answer
            except Exception:
                log.exception("%s failed", route)
                status, message, code, extra = 500, INTERNAL_ERROR, "internal_error", {}
            else:
                status = 200
                context.set_trailing_metadata((("x-request-id", rid),))
                self.observer.done(route, "POST", 200, time.perf_counter() - started, rid, call.prediction)
                return reply
            self.observer.done(route, "POST", status, time.perf_counter() - started, rid, call.prediction)
            trailing = [("x-request-id", rid), (ERROR_CODE_KEY, code)]
            trailing += [("retry-after", v) for k, v in extra.items() if k.lower() == "retry-after"]
            await context.abort(grpc_code(status), message, tuple(trailing))
            raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
        finally:
            reset_request_id(token)
            if traced is not None:
                tracing.end_request(traced, status)

    @staticmethod
    def _trace(route: str, headers: dict[bytes, bytes], rid: str) -> tracing.Traced:
        return tracing.start_request(
            route.lstrip("/"),
            headers.get(b"traceparent"),
            headers.get(b"tracestate"),
            lambda: {"rpc.system": "grpc", "rpc.method": route, "modelcache.request_id": rid},
        )


def _tensor_metadata(doc: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return tensor(name=doc["name"], datatype=doc["datatype"], shape=doc["shape"])


def _headers(context: Any) -> dict[bytes, bytes]:
    """The request's text metadata as the REST handlers' lower-case byte headers."""
    out: dict[bytes, bytes] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):  # binary (`-bin`) metadata is not a header the handlers read
            out[key.lower().encode("latin-1", "replace")] = value.encode("latin-1", "replace")
    return out
