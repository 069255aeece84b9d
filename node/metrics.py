"""Every Prometheus metric a node exports, on an injected registry.

Names are binding (docs/design.md). Labels carry only bounded values: model types
that exist in the registry, never request data. Hit rate is left to PromQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PREDICT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _CachedModels(Collector):
    """`modelcache_cached_model_info{model_type, version} 1` per cached model, read at scrape time."""

    def __init__(self, entries: Callable[[], list[tuple[str, str]]]) -> None:
        self.entries = entries

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelcache_cached_model_info",
            "1 for each model version held in the cache.",
            labels=["model_type", "version"],
        )
        for model_type, version in self.entries():
            family.add_metric([model_type, version], 1)
        yield family


class NodeMetrics:
    """The node's metrics, registered on `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter(
            "modelcache_cache_hits_total", "Lookups served from the cache.", ["model_type"], registry=r
        )
        self.cache_misses = Counter(
            "modelcache_cache_misses_total", "Lookups that needed a load.", ["model_type"], registry=r
        )
        self.cache_evictions = Counter(
            "modelcache_cache_evictions_total",
            "Models dropped from the cache, by reason: capacity (count bound), bytes (byte budget), "
            "idle (unused for MODELCACHE_CACHE_IDLE_TTL_S), unload (on request).",
            ["model_type", "reason"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "modelcache_model_load_seconds",
            "Time to read, verify and deserialize a model, retries included.",
            ["model_type"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.model_load_failures = Counter(
            "modelcache_model_load_failures_total",
            "Model loads that failed after every retry.",
            ["model_type", "reason"],
            registry=r,
        )
        self.cached_models = Gauge(
            "modelcache_cached_models", "Models currently held in the cache.", registry=r
        )
        self.cache_capacity_models = Gauge(
            "modelcache_cache_capacity_models", "Most models the cache holds.", registry=r
        )
        self.cache_bytes = Gauge(
            "modelcache_cache_bytes",
            "Resident bytes charged for the cached models (what the byte budget counts).",
            registry=r,
        )
        self.cache_max_bytes = Gauge(
            "modelcache_cache_max_bytes", "Byte budget of the cache (0 when unbounded).", registry=r
        )
        self.predict_seconds = Histogram(
            "modelcache_predict_seconds",
            "Model prediction time per request (excluding any load), by the version that answered.",
            ["model_type", "version"],
            buckets=PREDICT_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "modelcache_predictions_total",
            "Rows predicted (a batch of N counts N), by the version that answered.",
            ["model_type", "version"],
            registry=r,
        )
        self.prediction_errors = Counter(
            "modelcache_prediction_errors_total",
            "Rows whose predict call raised (input the model refused, or a model failure), by version.",
            ["model_type", "version"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "modelcache_canary_percent",
            "Share (0-100) of the requests naming no version that this node sends to a canary version.",
            ["model_type", "version"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "modelcache_batch_rows",
            "Rows per predict call after coalescing concurrent requests (1: predicted alone).",
            ["model_type"],
            buckets=BATCH_ROW_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "modelcache_reloads_total",
            "Reloads and pin changes applied by this node.",
            ["source", "outcome"],
            registry=r,
        )
        self.reload_propagation_seconds = Histogram(
            "modelcache_reload_propagation_seconds",
            "From a cluster change being published to this node having applied it.",
            buckets=PROPAGATION_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "modelcache_fallbacks_total",
            "Requests served by a lower version because the default could not load.",
            ["model_type"],
            registry=r,
        )
        self.redis_connected = Gauge(
            "modelcache_redis_connected", "1 while the node reaches Redis, else 0.", registry=r
        )
        self.background_errors = Counter(
            "modelcache_background_errors_total",
            "Errors caught at the top of a background thread (cluster sync, cache sweep); it goes on.",
            ["thread"],
            registry=r,
        )
        self.served_version = Gauge(
            "modelcache_served_version_info",
            "1 for the version this node serves by default for each model type.",
            ["model_type", "version"],
            registry=r,
        )
        self.pinned_version = Gauge(
            "modelcache_pinned_version_info",
            "1 for each cluster-wide pin this node knows of.",
            ["model_type", "version"],
            registry=r,
        )
        # -- HTTP layer (node.http.observe): route templates only, never raw paths --
        self.http_requests = Counter(
            "modelcache_http_requests_total",
            "HTTP requests answered, by route template ('unmatched' for no route), method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "modelcache_http_request_seconds",
            "Time from a request's arrival to its response being sent, by route template.",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )

        # process_resident_memory_bytes & co., to set RSS against the byte budget.
        # (The global registry has them already; registering twice would fail.)
        if r is not REGISTRY:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def observe_prediction(self, model_type: str, seconds: float, rows: int, version: str) -> None:
        """One predict call of `rows` rows, whichever protocol it came in by.

        `version` is bounded: only versions that were loaded (cached) and answered get here.
        """
        self.predict_seconds.labels(model_type, version).observe(seconds)
        self.predictions.labels(model_type, version).inc(rows)

    def observe_prediction_error(self, model_type: str, rows: int, version: str) -> None:
        """One predict call of `rows` rows that raised."""
        self.prediction_errors.labels(model_type, version).inc(rows)

    def track_cached(self, entries: Callable[[], list[tuple[str, str]]]) -> None:
        """Export what the cache holds (bounded by its capacity) for the dashboard's table."""
        self.registry.register(_CachedModels(entries))

    # -- hit-ratio curve (node.curve): what this node would hit at 1x, 2x, 4x its capacity --
    def track_hit_ratio_curve(self, estimates: Callable[[], dict[int, float]]) -> None:
        """Export `modelcache_cache_hit_ratio_estimate{capacity_factor}`, read at scrape time."""
        self.registry.register(_HitRatioEstimate(estimates))


class _HitRatioEstimate(Collector):
    """`modelcache_cache_hit_ratio_estimate{capacity_factor="1"|"2"|"4"}` from the ghost caches."""

    def __init__(self, estimates: Callable[[], dict[int, float]]) -> None:
        self.estimates = estimates

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelcache_cache_hit_ratio_estimate",
            "Estimated hit ratio (0..1) of this node's cache at capacity_factor times its capacity "
            "(ghost caches of its policy over the same lookups; factor 1 tracks the measured ratio).",
            labels=["capacity_factor"],
        )
        for factor, ratio in sorted(self.estimates().items()):
            family.add_metric([str(factor)], ratio)
        yield family
