"""Canary routes: start, list, abort and promote cluster-wide canary versions.

`PUT /api/v1/canaries/{model_type}` sends `percent`% of the requests for that
model type that name no version to `version` on every node (node.reloads loads it
beside the served version first); `DELETE` ends it, `POST .../promote` pins its
version and ends it in one change. The token is checked before any body. Each
route runs coordinator.control's command, as `modelcache canary` does over Redis.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from coordinator.control import Control
from node.http.admin import TimeoutQuery, changed
from node.http.common import NotAvailable, add_schemas, body_doc, read_body
from node.reloads import Reloads
from node.schemas import ADMIN_ERRORS, BodyTimeout

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
    """The canary routes, over the operator commands (coordinator.control)."""

    def __init__(self, control: Control | None, reloads: Reloads) -> None:
        self.control, self.reloads = control, reloads

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

    def _control(self) -> Control:
        if self.control is None:
            raise NotAvailable("this node runs without Redis (MODELCACHE_REDIS_URL unset): no canaries")
        return self.control

    async def list(self) -> dict[str, Any]:
        """Canaries in force, each with every live node's last outcome for it."""
        if self.control is None:
            local = self.reloads.canaries()
            return {"canaries": {mt: {**c.to_dict(), "nodes": []} for mt, c in local.items()}}
        return await asyncio.to_thread(self.control.canaries)

    async def put(self, model_type: str, request: Request) -> dict[str, Any]:
        """Start or change a canary (404 for an unknown version, 422 for a percent outside 0-100)."""
        body = await read_body(request, CanaryRequest)
        control = self._control()
        return await changed(
            control, control.canary, body.wait, body.timeout_s, model_type, body.version, body.percent
        )

    async def abort(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """End the canary: 100% back to the served version (pin, else latest stable)."""
        control = self._control()
        return await changed(control, control.abort_canary, wait, timeout_s, model_type)

    async def promote(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """Pin the canary's version everywhere and end the canary, in one change (404 if none runs)."""
        control = self._control()
        return await changed(control, control.promote, wait, timeout_s, model_type)
