"""Operations routes: liveness, readiness, Prometheus metrics, cache statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.http.common import FastJSON, error_response
from node.loads import Loads
from node.metrics import NodeMetrics
from node.schemas import ERRORS


class Ops:
    """`problems` says why the node should not take traffic now (empty: ready)."""

    def __init__(
        self, node_id: str, loads: Loads, metrics: NodeMetrics, problems: Callable[[], list[str]]
    ) -> None:
        self.node_id, self.loads, self.metrics, self.problems = node_id, loads, metrics, problems

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
        """Liveness: the process answers."""
        return {"status": "ok", "node_id": self.node_id}

    async def readyz(self) -> Response:
        """Readiness: 503 while warming up, while loading is wedged, or while cluster sync is unhealthy."""
        found = self.problems()
        if found:
            return error_response(503, "not_ready", "; ".join(found))
        return FastJSON({"status": "ready", "node_id": self.node_id})

    async def prometheus_metrics(self) -> Response:
        """Prometheus text exposition of this node's metrics."""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
