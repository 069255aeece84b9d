"""Pure ASGI middleware: request size limit, the last-resort 500, the node id on every response.

The refusals themselves are node.http.guards', shared with the prediction fast path.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.http.common import error_body
from node.http.guards import INTERNAL, Refusal, node_header, read_bounded, refusal

log = logging.getLogger("modelcache.api")


async def send_refusal(send: Send, refused: Refusal) -> None:
    await send_error(send, *refused)


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 when Content-Length or the streamed body exceeds `max_bytes`.

    The body is read here, up to the limit, and replayed to the app: a framework
    that parses it later could otherwise turn the overflow into a generic 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        refused = refusal(dict(scope.get("headers", ())), self.max_bytes)
        if refused is not None:
            await send_refusal(send, refused)
            return
        body = await read_bounded(receive, self.max_bytes)
        if body is None:  # client went away
            return
        if isinstance(body, Refusal):
            await send_refusal(send, body)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InternalErrorMiddleware:
    """Turn an exception no handler mapped into a 500 in the documented shape, with no internals.

    Starlette's own catch-all answers plain text and re-raises; this one logs the
    traceback and answers `{"error", "code": "internal_error"}`. Inputs should never
    get here: the fuzz tests assert that no request does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a response: let the server drop the connection
                raise
            await send_refusal(send, INTERNAL)


class NodeHeaderMiddleware:
    """Add `X-Modelcache-Node` to every response, errors included, so a load balancer's
    routing can be observed from outside."""

    def __init__(self, app: ASGIApp, node_id: str) -> None:
        self.app, self.header = app, node_header(node_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != self.header[0]]
                message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, with_header)
