"""make_node(registry, ...): a node's parts in this process, wired as node.app wires them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from coordinator.registry import Registry
from node.loader import Loader
from node.loads import Loads
from node.metrics import NodeMetrics
from node.parts import NodeParts
from node.reloads import Reloads
from node.resolver import Resolver
from node.service import ModelService


def make_node(
    registry: Registry,
    *,
    loader: Loader | None = None,
    pins: Mapping[str, str] | None = None,
    load_failure_ttl_s: float = 30.0,
    ondemand_loads_per_min: int = 30,
    clock: Callable[[], float] = time.monotonic,
    **loads: object,
) -> NodeParts:
    """`loads` are Loads' keyword arguments (cache_size, load_timeout_s, sweep, ...)."""
    metrics = NodeMetrics()
    loader = loader or Loader(registry, retries=1, sleep=lambda s: None)
    cache = Loads(loader, metrics, clock=clock, **loads)  # type: ignore[arg-type]
    resolver = Resolver(registry, metrics, pins=pins, failure_ttl_s=load_failure_ttl_s, clock=clock)
    service = ModelService(
        cache, resolver, metrics, ondemand_loads_per_min=ondemand_loads_per_min, clock=clock
    )
    return NodeParts(metrics, registry, cache, resolver, service, Reloads(cache, resolver, metrics))
