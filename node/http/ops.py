"""Operations routes: liveness, readiness, Prometheus metrics, cache statistics.

Readiness means "this node can answer predictions" (503 only while warming up). Degraded
states that do not stop that (cluster sync failing, Redis refusing, loads wedged or
backlogged) are listed in the 200 body and in `modelcache_degraded`, never a 503: HAProxy
and Kubernetes act on /readyz, and a shared dependency degrading would otherwise take every
node out of rotation at once. Liveness (/healthz) fails only when the process cannot answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from node.http.common import FastJSON, error_response
from node.loads import Loads
from node.metrics import NodeMetrics
from node.schemas import ERRORS


class Ops:
    """`problems` says why the node cannot take traffic now (empty: ready); `degraded` what is
    wrong while it still can."""

    def __init__(
        self,
        node_id: str,
        loads: Loads,
        metrics: NodeMetrics,
        problems: Callable[[], list[str]],
        degraded: Callable[[], list[str]] = list,
    ) -> None:
        self.node_id, self.loads, self.metrics, self.problems = node_id, loads, metrics, problems
        self.degraded = degraded

    def register(self, app: FastAPI) -> None:
        tags = ["operations"]
        app.add_api_route("/api/v1/cache/stats", self.cache_stats, methods=["GET"], tags=tags)
        app.add_api_route("/healthz", self.healthz, methods=["GET"], tags=tags)
        app.add_api_route("/readyz", self.readyz, methods=["GET"], tags=tags, responses={503: ERRORS[503]})
        app.add_api_route("/metrics", self.prometheus_metrics, methods=["GET"], tags=tags)

    async def cache_stats(self) -> dict[str, Any]:
        """Hits, misses, rates, evictions, loads, bytes and per-model entries of this node."""
        return {"node_id": self.node_id, **self.loads.stats()}

    async def healthz(self) -> dict[str, Any]:
        """Liveness: the process answers (its event loop runs); nothing else, so a restart only
        ever replaces a wedged process, never one waiting on Redis or a slow registry."""
        return {"status": "ok", "node_id": self.node_id}

    async def readyz(self) -> Response:
        """Readiness: 503 only while warming up; degraded states are listed, still 200."""
        found = self.problems()
        if found:
            return error_response(503, "not_ready", "; ".join(found))
        degraded = self._degraded()
        if degraded:
            return FastJSON({"status": "ready", "node_id": self.node_id, "degraded": degraded})
        return FastJSON({"status": "ready", "node_id": self.node_id})

    def _degraded(self) -> list[str]:
        found = self.degraded()
        self.metrics.degraded.set(1 if found else 0)
        return found

    async def prometheus_metrics(self, request: Request) -> Response:
        """Prometheus text exposition of this node's metrics; OpenMetrics (with exemplars: the
        trace ids of sampled requests on the latency histograms) when the scraper's `Accept`
        asks for `application/openmetrics-text`."""
        self._degraded()  # fresh at every scrape, whether or not anyone polls /readyz
        try:
            encode, content_type = choose_encoder(request.headers.get("accept", ""))
        except (TypeError, ValueError):  # prometheus_client compares a junk `version=abc` and raises
            encode, content_type = choose_encoder("")
        return Response(encode(self.metrics.registry), headers={"content-type": content_type})
