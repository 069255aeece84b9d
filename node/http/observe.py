"""What the node records about each request: its id, the HTTP metrics, the access log.

- **Request id.** `X-Request-ID` from the client when it is 1-128 printable ASCII
  characters without spaces, else a new one (a random per-process prefix and
  a counter); echoed in `X-Request-ID` on
  every response (errors included) and bound to the log context
  (`node.logs.bind_request_id`) while the request runs, so every line it logs
  carries it.
- **Metrics.** `modelcache_http_requests_total{route,method,status}` and
  `modelcache_http_request_seconds{route}`. `route` is the matched route's
  template (`/api/v1/models/{model_type}/predict`), `unmatched` when none
  matched; a method outside `METHODS` is `other`. Label sets stay bounded
  whatever clients send.
- **Access log** (`MODELCACHE_ACCESS_LOG=true`): one line per request on
  `modelcache.access` with the fields above and, for a prediction, the model
  type, version, whether it was a cache hit and its rows; with tracing on
  (node.tracing), its `trace_id`.
- **Exemplars.** With tracing on, a sampled request's trace id is an exemplar
  on `modelcache_http_request_seconds` (shown in the OpenMetrics exposition).

The fast path (`node.http.fast`) calls `Observer` itself; `ObserveMiddleware`
does the same for the FastAPI routes.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node import tracing
from node.logs import ACCESS_LOGGER, bind_request_id, reset_request_id
from node.metrics import NodeMetrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
"""Probes and scrapes: traced, they would be most of the traces and say nothing."""
REQUEST_ID = b"x-request-id"
PREDICTION = "modelcache.prediction"
"""Scope key under which a prediction route leaves its `Prediction` for the middleware."""

_VALID_ID = re.compile(rb"[\x21-\x7e]{1,128}")
access = logging.getLogger(ACCESS_LOGGER)


@dataclass(slots=True)
class Prediction:
    """What a prediction route tells the access log."""

    model_type: str
    version: str
    cached: bool
    rows: int


# A new id is this process's random prefix and a counter: unique across nodes and
# restarts without a system call per request (os.urandom cost ~1% of a predict).
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)


def request_id(raw: bytes | None) -> str:
    """The client's id when it is safe to log and echo, else a new one (16 hex digits)."""
    if raw is not None and _VALID_ID.fullmatch(raw):
        return raw.decode("ascii")
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"


class Observer:
    """Counts, times and (optionally) logs finished requests; one per app."""

    def __init__(self, metrics: NodeMetrics, access_log: bool = False) -> None:
        self.access_log = access_log
        self.traced = tracing.enabled()
        self._requests, self._seconds = metrics.http_requests, metrics.http_request_seconds
        # Labelled children resolved once: `.labels()` costs more than the increment itself.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[str, Any] = {}

    def done(
        self,
        route: str,
        method: str,
        status: int,
        seconds: float,
        rid: str,
        prediction: Prediction | None = None,
    ) -> None:
        """Record one answered request (call it while its request id is still bound)."""
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = self._seconds.labels(route)
        if self.traced:
            histogram.observe(seconds, tracing.exemplar())
        else:
            histogram.observe(seconds)
        if self.access_log:
            self._log(route, method, status, seconds, rid, prediction)

    def _log(
        self, route: str, method: str, status: int, seconds: float, rid: str, prediction: Prediction | None
    ) -> None:
        ms = round(seconds * 1000, 3)
        fields: dict[str, Any] = {
            "request_id": rid,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": ms,
        }
        if self.traced:
            trace_id = tracing.trace_id()
            if trace_id is not None:
                fields["trace_id"] = trace_id
        if prediction is not None:
            fields["model_type"] = prediction.model_type
            fields["version"] = prediction.version
            fields["cached"] = prediction.cached
            fields["rows"] = prediction.rows
        access.info("%s %s %d %.1fms", method, route, status, ms, extra=fields)


class ObserveMiddleware:
    """The request id, metrics and access log for the FastAPI routes (outermost middleware).

    The route template is read from `scope["route"]`, which routing sets on the
    shared scope once it matched; it is read after the app answered.
    """

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self.app, self.observer = app, observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw = next((v for k, v in scope["headers"] if k == REQUEST_ID), None)
        rid = request_id(raw)
        echoed = (REQUEST_ID, rid.encode())
        status = 500  # what the server answers when the app raised before responding

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != REQUEST_ID]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)

        token = bind_request_id(rid)
        traced = self._trace(scope, rid) if self.observer.traced and scope["path"] not in UNTRACED else None
        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            seconds = time.perf_counter() - started
            self.observer.done(route, scope["method"], status, seconds, rid, scope.get(PREDICTION))
            reset_request_id(token)
            if traced is not None:
                tracing.end_request(traced, status, route)

    @staticmethod
    def _trace(scope: Scope, rid: str) -> tracing.Traced:
        """The request's server span; named `<method> <route>` once routing matched."""
        headers = dict(scope["headers"])
        method = scope["method"]
        return tracing.start_request(
            method,
            headers.get(b"traceparent"),
            headers.get(b"tracestate"),
            lambda: {"http.request.method": method, "modelcache.request_id": rid},
        )
