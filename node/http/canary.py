"""Canary routes: start, list, abort and promote cluster-wide canary versions.

`PUT /api/v1/canaries/{model_type}` sends `percent`% of the requests for that
model type that name no version to `version` on every node (node.sync loads it
beside the served version first); `DELETE` ends it, `POST .../promote` pins its
version and ends it in one change. The token is checked before any body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from node.http.admin import Cluster, TimeoutQuery
from node.http.common import NotAvailable, add_schemas, body_doc, read_body
from node.schemas import ADMIN_ERRORS, BodyTimeout
from node.service import ModelService

# Strict: "20" (a string) or true is refused with 422, as are NaN and values outside 0-100.
Percent = Annotated[float, Field(ge=0, le=100, strict=True, allow_inf_nan=False)]


class CanaryRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"version": "1.1.0", "percent": 10, "wait": True}]}
    )
    version: str = Field(description="The version to try; it must exist in the registry.")
    percent: Percent = Field(description="Share (0-100) of the requests naming no version sent to it.")
    wait: StrictBool = Field(False, description="Wait for every node's acknowledgement (ok, or why not).")
    timeout_s: BodyTimeout = 10.0


class Canaries:
    """The canary routes, over the node's cluster coordination (node.sync.ClusterSync)."""

    def __init__(self, cluster: Cluster | None, service: ModelService) -> None:
        self.cluster, self.service = cluster, service

    def register(self, app: FastAPI, require_admin: Any) -> None:
        guarded = {"dependencies": [Depends(require_admin)], "responses": ADMIN_ERRORS, "tags": ["canary"]}
        app.add_api_route("/api/v1/canaries", self.list, methods=["GET"], tags=["canary"])
        app.add_api_route(
            "/api/v1/canaries/{model_type}",
            self.put,
            methods=["PUT"],
            openapi_extra=body_doc(CanaryRequest),
            **guarded,
        )
        app.add_api_route("/api/v1/canaries/{model_type}", self.abort, methods=["DELETE"], **guarded)
        app.add_api_route("/api/v1/canaries/{model_type}/promote", self.promote, methods=["POST"], **guarded)
        add_schemas(app, [CanaryRequest])

    def _cluster(self) -> Any:
        if self.cluster is None:
            raise NotAvailable("this node runs without Redis (MODELCACHE_REDIS_URL unset): no canaries")
        return self.cluster

    async def list(self) -> dict[str, Any]:
        """Canaries in force, each with every live node's last outcome for it."""
        if self.cluster is None:
            local = self.service.canaries()
            return {
                "canaries": {mt: {"version": v, "percent": p, "nodes": []} for mt, (v, p) in local.items()}
            }
        return await self._cluster().canaries()

    async def put(self, model_type: str, request: Request) -> dict[str, Any]:
        """Start or change a canary (404 for an unknown version, 422 for a percent outside 0-100)."""
        body = await read_body(request, CanaryRequest)
        return await self._cluster().set_canary(
            model_type, body.version, body.percent, body.wait, body.timeout_s
        )

    async def abort(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """End the canary: 100% back to the served version (pin, else latest stable)."""
        return await self._cluster().abort_canary(model_type, wait, timeout_s)

    async def promote(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """Pin the canary's version everywhere and end the canary, in one change (404 if none runs)."""
        return await self._cluster().promote_canary(model_type, wait, timeout_s)
