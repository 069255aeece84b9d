"""Admin and cluster routes: reload, pins, the cluster view. The token is checked before any body."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Query, Request

from node.http.common import AdminError, NotAvailable, body_doc, read_body
from node.schemas import ADMIN_ERRORS, MAX_TIMEOUT_S, PinRequest, ReloadRequest
from node.service import ModelService
from node.settings import NodeSettings

# Query parameters get the same bounds as the bodies' `timeout_s` (NaN, inf, <= 0 are refused).
TimeoutQuery = Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]


class Cluster(Protocol):
    """What the HTTP layer needs from cluster coordination (node.sync implements it).

    `problems()` (why this node should not take traffic, empty when it should) is
    optional: readiness includes it when the object has it.
    """

    async def pins(self) -> dict[str, str]: ...
    async def set_pin(
        self, model_type: str, version: str, wait: bool, timeout_s: float
    ) -> dict[str, Any]: ...
    async def unpin(self, model_type: str, wait: bool, timeout_s: float) -> dict[str, Any]: ...
    async def reload(
        self, model_type: str | None, version: str | None, wait: bool, timeout_s: float
    ) -> dict[str, Any]: ...
    async def describe(self) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Admin:
    """Reload, pins and the cluster view; admin routes depend on `require_admin`."""

    def __init__(self, settings: NodeSettings, service: ModelService, cluster: Cluster | None) -> None:
        self.service, self.cluster = service, cluster
        self.node_id = settings.resolved_node_id
        self.token = settings.admin_token

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

    def _cluster(self) -> Cluster:
        if self.cluster is None:
            raise NotAvailable("this node runs without Redis (MODELCACHE_REDIS_URL unset): no cluster")
        return self.cluster

    async def reload(self, request: Request) -> dict[str, Any]:
        """Reload without downtime: the new model loads beside the old, then swaps in.

        `scope=node` reloads this node only; `scope=cluster` reaches every node through Redis.
        """
        body = await read_body(request, ReloadRequest)
        if body.scope == "cluster":
            return await self._cluster().reload(body.model_type, body.version, body.wait, body.timeout_s)
        outcomes = await asyncio.to_thread(self.service.reload, body.model_type, body.version, source="api")
        return {
            "scope": "node",
            "acks": [{"node_id": self.node_id, **o.to_dict()} for o in outcomes],
            "ok": all(o.outcome == "ok" for o in outcomes),
        }

    async def get_pins(self) -> dict[str, Any]:
        """Version pins in force (cluster-wide when Redis is configured)."""
        pins = await self.cluster.pins() if self.cluster is not None else self.service.pins
        return {"pins": pins}

    async def put_pin(self, model_type: str, request: Request) -> dict[str, Any]:
        """Pin a model type to a version on every node (refused if the version does not exist)."""
        body = await read_body(request, PinRequest)
        return await self._cluster().set_pin(model_type, body.version, body.wait, body.timeout_s)

    async def delete_pin(
        self, model_type: str, wait: bool = False, timeout_s: TimeoutQuery = 10.0
    ) -> dict[str, Any]:
        """Remove a pin: every node goes back to the latest stable version."""
        return await self._cluster().unpin(model_type, wait, timeout_s)

    async def cluster_view(self) -> dict[str, Any]:
        """Live nodes with their cached models and stats, pins and reload generations."""
        return await self._cluster().describe()
