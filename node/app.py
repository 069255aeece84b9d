"""The composition root: build a node's collaborators from its settings."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from coordinator.registry import Registry
from node.http.app import create_app
from node.loader import Loader
from node.metrics import NodeMetrics
from node.service import ModelService
from node.settings import NodeSettings


def build_service(settings: NodeSettings, metrics: NodeMetrics) -> ModelService:
    registry = Registry(settings.registry)
    loader = Loader(registry, retries=settings.load_retries, backoff_s=settings.load_retry_backoff_s)
    return ModelService(
        registry,
        loader,
        metrics,
        cache_size=settings.cache_size,
        cache_max_bytes=settings.cache_max_bytes,
        cache_policy=settings.cache_policy,
        cache_idle_ttl_s=settings.cache_idle_ttl_s,
        load_failure_ttl_s=settings.load_failure_ttl_s,
        load_timeout_s=settings.load_timeout_s,
        load_workers=settings.load_workers,
        ondemand_loads_per_min=settings.ondemand_loads_per_min,
        pins=settings.pins,
    )


def build_app(settings: NodeSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    """A complete node: service, metrics and (with a Redis URL) cluster sync."""
    metrics = NodeMetrics(registry)
    service = build_service(settings, metrics)
    cluster = None
    if settings.redis_url:
        from node.sync import ClusterSync

        cluster = ClusterSync(settings, service, metrics)
        warmup = cluster.warm
    else:

        def warmup() -> list[str]:
            return service.warm(settings.warmup)

    app = create_app(settings, service, metrics, cluster=cluster, warmup=warmup)
    if settings.resolved_grpc_port is not None:
        from node.grpc.server import GrpcServer

        ready = app.state.problems
        GrpcServer(settings, service, metrics, app.state.batcher, lambda: not ready()).serve_with(app)
    return app
