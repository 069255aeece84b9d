"""The composition root: build every collaborator of a node from its settings, once, and hand
each one what it uses (no part receives the settings object or reaches through another)."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from coordinator.control import Control
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.registry import AnyRegistry, open_registry
from coordinator.registry.disk_tier import DiskTier
from coordinator.registry.store import Timeouts, is_store_url
from coordinator.state import ClusterState
from node import tracing
from node.cache_state import state_path
from node.heap import freeze_startup_heap
from node.http.app import create_app
from node.loader import Loader
from node.loads import Loads
from node.metrics import NodeMetrics
from node.parts import NodeParts
from node.reconcile import Reconciler
from node.reloads import Reloads
from node.resolver import Resolver
from node.restore import WarmRestart
from node.service import ModelService
from node.settings import NodeSettings
from node.sync import ClusterSync, NodeReport, SyncTiming


def build_registry(settings: NodeSettings, metrics: NodeMetrics) -> AnyRegistry:
    """The registry the settings name; an object store gets its disk tier, timeouts and metrics."""
    tier = None
    if settings.local_cache_dir is not None and is_store_url(str(settings.registry)):
        tier = DiskTier(settings.local_cache_dir, settings.local_cache_max_bytes, metrics.store)
    return open_registry(
        settings.registry,
        disk_tier=tier,
        listing_ttl_s=settings.registry_listing_ttl_s,
        timeouts=Timeouts(connect_s=min(2.0, settings.store_timeout_s), read_s=settings.store_timeout_s),
        observer=metrics.store,
    )


def build_node(settings: NodeSettings, metrics: NodeMetrics | None = None) -> NodeParts:
    """Every part of one node; with a Redis URL also cluster sync and the operator commands."""
    metrics = metrics or NodeMetrics()
    registry = build_registry(settings, metrics)
    loader = Loader(registry, retries=settings.load_retries, backoff_s=settings.load_retry_backoff_s)
    loads = Loads(
        loader,
        metrics,
        cache_size=settings.cache_size,
        cache_max_bytes=settings.cache_max_bytes,
        cache_policy=settings.cache_policy,
        cache_idle_ttl_s=settings.cache_idle_ttl_s,
        load_timeout_s=settings.load_timeout_s,
        load_workers=settings.load_workers,
    )
    resolver = Resolver(registry, metrics, pins=settings.pins, failure_ttl_s=settings.load_failure_ttl_s)
    service = ModelService(loads, resolver, metrics, ondemand_loads_per_min=settings.ondemand_loads_per_min)
    reloads = Reloads(loads, resolver, metrics)
    node_id = settings.resolved_node_id
    restart = None
    if settings.state_dir is not None:
        restart = WarmRestart(
            state_path(settings.state_dir, node_id),
            node_id,
            loads,
            resolver,
            metrics,
            budget_s=settings.restore_budget_s,
            save_interval_s=settings.state_save_interval_s,
        )

    def preload(model_types: list[str]) -> list[str]:
        # The node's own hottest models first (once pins are known), then the warm-up list
        # into the room that is left.
        restored = restart.restore() if restart is not None else []
        return restored + service.warm(model_types)

    if not settings.redis_url:

        def warm_alone() -> list[str]:
            return preload(settings.warmup)

        return NodeParts(
            metrics, registry, loads, resolver, service, reloads, warmup=warm_alone, restart=restart
        )
    link = Link.from_url(settings.redis_url, settings.redis_prefix)
    # A change carries the trace of the admin call that made it (node.tracing.applied).
    state = ClusterState(
        link,
        origin=node_id,
        replica_timeout_s=settings.redis_replica_wait_s,
        trace_context=tracing.traceparent,
    )
    members = Membership(link)
    sync = ClusterSync(
        link,
        state,
        members,
        Reconciler(node_id, reloads, metrics),
        metrics,
        url=settings.resolved_public_url,
        report=lambda: node_report(loads, resolver, service),
        timing=SyncTiming(settings.reconcile_interval_s, settings.heartbeat_s),
    )
    popular = loads.cache.capacity if settings.warmup_popular else 0

    def warm_from_cluster() -> list[str]:
        return sync.warm(preload, settings.warmup, popular)

    control = Control(state, members, registry)
    return NodeParts(
        metrics,
        registry,
        loads,
        resolver,
        service,
        reloads,
        control,
        sync,
        warmup=warm_from_cluster,
        restart=restart,
    )


def node_report(loads: Loads, resolver: Resolver, service: ModelService) -> NodeReport:
    """What this node's heartbeat tells the cluster: what it caches and serves, its cache stats."""
    stats = loads.stats()
    return NodeReport(
        cached=[{"model_type": m["model_type"], "version": m["version"]} for m in stats["models"]],
        serving=resolver.serving(),
        stats={k: v for k, v in stats.items() if k != "models"},
        request_counts=service.request_counts(),
        sizes={m["model_type"]: m["size_bytes"] for m in stats["models"] if m["size_bytes"] is not None},
    )


def build_app(
    settings: NodeSettings, registry: CollectorRegistry | None = None, *, freeze_heap: bool = False
) -> FastAPI:
    """A complete node: its parts behind the HTTP layer, and the gRPC door over the same V2 handler.

    With MODELCACHE_TRACING=true, tracing is installed first (node.otel, imported only then):
    the parts built below check once, at construction, whether it is on.
    `freeze_heap` (the node process, not tests that build many apps in one process): once warm
    and the model libraries imported (XGBoost, scikit-learn and SciPy bring ~100k objects), the
    start-up heap is exempted from garbage-collector passes (node.heap).
    """
    if settings.tracing:
        from node.otel import install

        install(settings.resolved_node_id)
    parts = build_node(settings, NodeMetrics(registry))
    app = create_app(settings, parts, after_start=freeze_startup_heap if freeze_heap else None)
    if settings.resolved_grpc_port is not None:
        from node.grpc.server import GrpcServer

        ready = app.state.problems
        GrpcServer(settings, parts, app.state.v2, lambda: not ready()).serve_with(app)
    return app
