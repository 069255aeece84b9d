"""The collaborators of one node, as the composition root (node.app) hands them to the HTTP layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from coordinator.control import Control
from coordinator.registry import Registry
from node.loads import Loads
from node.metrics import NodeMetrics
from node.reloads import Reloads
from node.resolver import Resolver
from node.restore import WarmRestart
from node.service import ModelService


class Background(Protocol):
    """A node's background work (node.sync.ClusterSync): started and stopped with the app."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def problems(self) -> list[str]:
        """Why this node should not take traffic now; empty when it should."""
        ...


@dataclass(frozen=True)
class NodeParts:
    """Each part is built once in node.app and shared: one cache, one resolver, one registry."""

    metrics: NodeMetrics
    registry: Registry
    loads: Loads
    resolver: Resolver
    service: ModelService
    """The request path."""
    reloads: Reloads
    """Changes on this node: reload, pin, canary."""
    control: Control | None = None
    """Operator commands over Redis; None on a node without MODELCACHE_REDIS_URL."""
    sync: Background | None = None
    warmup: Callable[[], list[str]] | None = None
    restart: WarmRestart | None = None
    """Saves and restores the cache across restarts; None without MODELCACHE_STATE_DIR."""

    def close(self) -> None:
        """Stop what runs beside the app (the cache sweep), saving the cache state last."""
        if self.restart is not None:
            self.restart.stop()
        self.loads.close()
