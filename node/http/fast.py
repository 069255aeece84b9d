"""The prediction routes' fast path: a small route table served in front of FastAPI.

FastAPI's per-request machinery (its middleware stack, dependency solving,
request and response objects) costs ~300 µs, more than a single-row predict.
The prediction routes therefore run here: `NodeApp.__call__` matches a POST
against `FastRoutes` and serves it in one pure ASGI call that does, in order,
what the FastAPI part's middleware does for the other routes, with the same
guards (node.http.guards):

- 415 for a compressed body, 413 on `Content-Length` or on the streamed body;
- the handler (`Call` in, `Reply` out), its known errors mapped by
  `common.map_error` into `{"error", "code"}`, anything else a 500 without
  internals (logged with its traceback);
- `X-Modelcache-Node` and `X-Request-ID` on every answer, the request id bound
  to the log context meanwhile, the HTTP metrics and the access log
  (`node.http.observe`);
- with tracing on, the request's server span, continuing its `traceparent`
  (node.tracing; off, one boolean check).

The same handlers are registered with FastAPI as ordinary routes (`document`),
so `/docs` and `/openapi.json` describe them and a request the table does not
match still gets an answer.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from coordinator.errors import ModelCacheError
from node import tracing
from node.errors import InvalidInput
from node.http.common import map_error
from node.http.guards import INTERNAL, Refusal, node_header, read_bounded, refusal
from node.http.observe import PREDICTION, REQUEST_ID, Observer, Prediction, request_id
from node.logs import bind_request_id, reset_request_id
from node.resolver import MAX_ROUTING_KEY

log = logging.getLogger("modelcache.api")

JSON = b"application/json"
TRACEPARENT, TRACESTATE = b"traceparent", b"tracestate"
CLIENT_GONE = 499
"""The status a traced request records when the client left before its answer (nginx's code)."""


class Reply(NamedTuple):
    """A handler's answer: body and headers (content type included), status."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    status: int = 200


@dataclass(slots=True)
class Call:
    """What a fast handler gets: path parameters, the body, the raw (lower-case) headers.

    A prediction handler sets `prediction` for the access log.
    """

    params: dict[str, str]
    body: bytes
    headers: dict[bytes, bytes]
    prediction: Prediction | None = None


Handler = Callable[[Call], Awaitable[Reply]]
ROUTING_KEY = b"x-modelcache-routing-key"


def routing_key(call: Call, in_body: str | None = None) -> str | None:
    """The request's canary routing key: the body's `routing_key`, else the header (bounded)."""
    if in_body is not None:
        return in_body
    raw = call.headers.get(ROUTING_KEY)
    if raw is None:
        return None
    key = raw.decode("latin-1")
    if len(key) > MAX_ROUTING_KEY:
        raise InvalidInput(f"X-Modelcache-Routing-Key is longer than {MAX_ROUTING_KEY} characters")
    return key


def json_reply(doc: Any, headers: list[tuple[bytes, bytes]] | None = None, status: int = 200) -> Reply:
    return Reply(orjson.dumps(doc), [(b"content-type", JSON), *(headers or ())], status)


class FastRoutes:
    """POST routes matched by exact path or a `{param}` template, served as pure ASGI."""

    def __init__(self, node_id: str, max_body_bytes: int, registry_root: Path, observer: Observer) -> None:
        self.node_header = node_header(node_id)
        self.max_body_bytes, self.registry_root = max_body_bytes, registry_root
        self.observer = observer
        self.traced = tracing.enabled()
        """Fixed at construction (node.app installs tracing before building the routes)."""
        self.in_flight = 0
        """Requests inside `serve` now (the batcher asks whether anyone else is)."""
        self._exact: dict[str, tuple[str, Handler]] = {}
        self._templates: list[tuple[re.Pattern[str], str, Handler]] = []

    def add(self, path: str, handler: Handler) -> None:
        names = re.findall(r"{(\w+)}", path)
        if not names:
            self._exact[path] = (path, handler)
            return
        # Starlette's `str` convertor: one non-empty segment.
        pattern = re.escape(path)
        for name in names:
            pattern = pattern.replace(re.escape(f"{{{name}}}"), f"(?P<{name}>[^/]+)")
        self._templates.append((re.compile(pattern + r"\Z"), path, handler))

    def match(self, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        """(route template, handler, path parameters), or None."""
        exact = self._exact.get(path)
        if exact is not None:
            return exact[0], exact[1], {}
        for pattern, template, handler in self._templates:
            found = pattern.match(path)
            if found is not None:
                return template, handler, found.groupdict()
        return None

    async def serve(
        self,
        template: str,
        handler: Handler,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        rid = request_id(headers.get(REQUEST_ID))
        token = bind_request_id(rid)
        # Off, tracing costs this one check (node.tracing).
        traced = self._trace(template, headers, rid) if self.traced else None
        self.in_flight += 1
        status = CLIENT_GONE
        try:
            call = Call(params, b"", headers)
            reply = await self._answer(handler, call, scope, receive)
            if reply is None:
                return  # the client went away
            status = reply.status
            await self._send(send, reply, rid)
            self.observer.done(
                template, "POST", reply.status, time.perf_counter() - started, rid, call.prediction
            )
        finally:
            self.in_flight -= 1
            reset_request_id(token)
            if traced is not None:
                tracing.end_request(traced, status)

    def _trace(self, template: str, headers: dict[bytes, bytes], rid: str) -> tracing.Traced:
        return tracing.start_request(
            f"POST {template}",
            headers.get(TRACEPARENT),
            headers.get(TRACESTATE),
            lambda: {"http.request.method": "POST", "http.route": template, "modelcache.request_id": rid},
        )

    async def _answer(self, handler: Handler, call: Call, scope: Scope, receive: Receive) -> Reply | None:
        try:
            refused = refusal(call.headers, self.max_body_bytes)
            if refused is not None:
                return error_reply(*refused)
            body = await read_bounded(receive, self.max_body_bytes)
            if body is None:
                return None
            if isinstance(body, Refusal):
                return error_reply(*body)
            call.body = body
            return await handler(call)
        except ModelCacheError as exc:
            status, doc, extra = map_error(exc, self.registry_root, scope["method"], scope["path"])
            extra_headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            return json_reply(doc, extra_headers, status)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            return error_reply(*INTERNAL)

    async def _send(self, send: Send, reply: Reply, rid: str) -> None:
        headers = [
            *reply.headers,
            (b"content-length", str(len(reply.body)).encode()),
            self.node_header,
            (REQUEST_ID, rid.encode()),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


def error_reply(status: int, code: str, message: str) -> Reply:
    return json_reply({"error": message, "code": code}, status=status)


class NodeApp(FastAPI):
    """FastAPI with `fast` routes served before its own stack (see the module docstring)."""

    fast: FastRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            found = self.fast.match(scope["path"])
            if found is not None:
                await self.fast.serve(*found, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def document(app: FastAPI, path: str, handler: Handler, **route: Any) -> None:
    """Register `handler` with FastAPI too: it is documented, and served if the table misses.

    The endpoint's signature names the path parameters (FastAPI documents them
    from it); its body is read raw, as on the fast path.
    """

    async def endpoint(request: Request, **params: str) -> Response:
        call = Call(params, await request.body(), dict(request.scope["headers"]))
        reply = await handler(call)
        request.scope[PREDICTION] = call.prediction  # for the access log (ObserveMiddleware)
        response = Response(reply.body, status_code=reply.status)
        response.raw_headers = [h for h in response.raw_headers if h[0] != b"content-type"]
        response.raw_headers.extend(reply.headers)
        return response

    names = re.findall(r"{(\w+)}", path)
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=str) for n in names]
    endpoint.__signature__ = inspect.Signature([request, *params])  # type: ignore[attr-defined]
    route.setdefault("description", inspect.getdoc(handler))
    route.setdefault("name", handler.__name__)
    app.add_api_route(path, endpoint, methods=["POST"], **route)
