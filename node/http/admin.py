"""Admin and cluster routes: reload, pins, the cluster view. The token is checked before any body.

Cluster-wide calls are coordinator.control's operator commands, the same code the
CLI runs over Redis, on a worker thread; `scope=node` reloads are node.reloads'.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request

from coordinator.control import Control
from coordinator.wire import Change
from node.http.common import AdminError, NotAvailable, body_doc, read_body
from node.reloads import Reloads
from node.schemas import ADMIN_ERRORS, MAX_TIMEOUT_S, PinRequest, ReloadRequest

# Query parameters get the same bounds as the bodies' `timeout_s` (NaN, inf, <= 0 are refused).
TimeoutQuery = Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]


class Admin:
    """Reload, pins and the cluster view; admin routes depend on `require_admin`."""

    def __init__(self, node_id: str, admin_token: str, reloads: Reloads, control: Control | None) -> None:
        self.node_id, self.token = node_id, admin_token
        self.reloads, self.control = reloads, control

    def register(self, app: FastAPI) -> None:
        guarded = {"dependencies": [Depends(self.require_admin)], "responses": ADMIN_ERRORS}
        app.add_api_route(
            "/api/v1/models/reload",
            self.reload,
            methods=["POST"],
            tags=["admin"],
            openapi_extra=body_doc(ReloadRequest),
            **guarded,
        )
        app.add_api_route("/api/v1/pins", self.get_pins, methods=["GET"], tags=["cluster"])
        app.add_api_route(
            "/api/v1/pins/{model_type}",
            self.put_pin,
            methods=["PUT"],
            tags=["cluster"],
            openapi_extra=body_doc(PinRequest),
            **guarded,
        )
        app.add_api_route(
            "/api/v1/pins/{model_type}", self.delete_pin, methods=["DELETE"], tags=["cluster"], **guarded
        )
        app.add_api_route("/api/v1/cluster", self.cluster_view, methods=["GET"], tags=["cluster"])

    def require_admin(self, request: Request) -> None:
        """A FastAPI dependency: runs before the body is read or parsed."""
        if not self.token:
            raise AdminError(403, "admin_disabled", "admin API disabled: set MODELCACHE_ADMIN_TOKEN")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AdminError(401, "unauthorized", "admin route: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise AdminError(403, "forbidden", "admin token is not valid")

    def _control(self) -> Control:
        if self.control is None:
            raise NotAvailable("this node runs without Redis (MODELCACHE_REDIS_URL unset): no cluster")
        return self.control

    async def reload(self, request: Request) -> dict[str, Any]:
        """Reload without downtime: the new model loads beside the old, then swaps in.

        `scope=node` reloads this node only; `scope=cluster` reaches every node through Redis.
        """
        body = await read_body(request, ReloadRequest)
        if body.scope == "cluster":
            control = self._control()
            return await changed(
                control, control.reload, body.wait, body.timeout_s, body.model_type, body.version
            )
        outcomes = await asyncio.to_thread(self.reloads.reload, body.model_type, body.version, source="api")
        return {
            "scope": "node",
            "acks": [{"node_id": self.node_id, **o.to_dict()} for o in outcomes],
            "ok": all(o.ok for o in outcomes),
        }

    async def get_pins(self) -> dict[str, Any]:
        """Version pins in force (cluster-wide when Redis is configured)."""
        if self.control is None:
            return {"pins": self.reloads.pins()}
        return {"pins": await asyncio.to_thread(self.control.pins)}

    async def put_pin(self, model_type: str, request: Request) -> dict[str, Any]:
        """Pin a model type to a version on every node (refused if the version does not exist)."""
        body = await read_body(request, PinRequest)
        control = self._control()
        return await changed(control, control.pin, body.wait, body.timeout_s, model_type, body.version)

    async def delete_pin(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """Remove a pin: every node goes back to the latest stable version."""
        control = self._control()
        return await changed(control, control.unpin, wait, timeout_s, model_type)

    async def cluster_view(self) -> dict[str, Any]:
        """Live nodes with their cached models and stats, pins and reload generations."""
        return await asyncio.to_thread(self._control().describe)


async def changed(
    control: Control, command: Callable[..., Change], wait: bool, timeout_s: float, *args: Any
) -> dict[str, Any]:
    """Run one operator command, then answer as the CLI does (waiting for acks if asked), off the loop."""

    def run() -> dict[str, Any]:
        return control.answer(command(*args), wait, timeout_s)

    return await asyncio.to_thread(run)
