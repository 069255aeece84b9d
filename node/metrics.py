"""Every Prometheus metric a node exports, on an injected registry.

Names are binding (docs/design.md). Labels carry only bounded values: model types
that exist in the registry, never request data. Hit rate is left to PromQL.

Per-model series follow the cache, not the registry (`ModelSeries`): once a model
type has left the cache, its series are kept only until `capacity` other types
have left after it, so `/metrics` holds at most about 2 x capacity model types
however many the registry has. `_created` series are off (see below).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from node import tracing

# Every counter and histogram would otherwise carry a `<name>_created` gauge per label set:
# ten extra families that no dashboard or rule reads. Process-wide by design in
# client_python; the node is the process.
disable_created_metrics()

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


class ModelSeries:
    """Keeps the per-model series of `families` to the cached model types and the last departed.

    A model type that leaves the cache (or has series without ever being cached: a
    failed load) joins a queue of departed types; its series go once `retain()`
    types departed after it, or when it is cached again it leaves the queue. The
    grace lets the last increments (the eviction itself) reach a scrape.
    `prune()` runs on every eviction and after every scrape.
    """

    def __init__(
        self,
        families: list[MetricWrapperBase],
        cached_types: Callable[[], set[str]],
        retain: Callable[[], int],
        on_drop: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.families, self.cached_types, self.retain, self.on_drop = families, cached_types, retain, on_drop
        self._departed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def present(self) -> set[str]:
        """Model types that have a series in any of the families."""
        return {
            s.labels["model_type"]
            for family in self.families
            for metric in family.collect()
            for s in metric.samples
            if "model_type" in s.labels
        }

    def prune(self, departed: str | None = None) -> list[str]:
        """Queue the types not cached (`departed` last); drop the series of the overflow; return it."""
        cached = self.cached_types()
        with self._lock:
            for model_type in sorted(self.present() - cached - self._departed.keys()):
                self._departed[model_type] = None
            if departed is not None and departed not in cached:
                self._departed[departed] = None
                self._departed.move_to_end(departed)
            for model_type in [m for m in self._departed if m in cached]:
                del self._departed[model_type]
            dropped = []
            while len(self._departed) > max(self.retain(), 0):
                dropped.append(self._departed.popitem(last=False)[0])
            for model_type in dropped:
                for family in self.families:
                    family.remove_by_labels({"model_type": model_type})
                self.on_drop(model_type)
        return dropped

    def departed(self) -> list[str]:
        """Uncached types whose series are still kept, the next to go first."""
        with self._lock:
            return list(self._departed)


class _CachedTypesGauge(Gauge):
    """A gauge whose `model_type` series are exported only while that type is cached.

    For `modelcache_served_version_info`: the resolver sets it once per change of the
    default (not on every load), so removing its series would lose them for good; it
    stays in the resolver's hands and only the export is filtered. (client_python has
    no public filter hook: `_multi_samples` is where a labelled metric lists its series.)
    """

    cached_types: Callable[[], set[str]] | None = None

    def _multi_samples(self) -> Iterator[Any]:
        keep = self.cached_types() if self.cached_types is not None else None
        for sample in super()._multi_samples():
            if keep is None or sample.labels.get("model_type") in keep:
                yield sample


class _CachedModels(Collector):
    """`modelcache_cached_model_info{model_type, version} 1` per cached model, read at scrape time.

    Registered after the node's own metrics, so `after_scrape` runs once they were rendered.
    """

    def __init__(self, entries: Callable[[], list[tuple[str, str]]], after_scrape: Callable[[], Any]) -> None:
        self.entries, self.after_scrape = entries, after_scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelcache_cached_model_info",
            "1 for each model version held in the cache.",
            labels=["model_type", "version"],
        )
        for model_type, version in self.entries():
            family.add_metric([model_type, version], 1)
        yield family
        self.after_scrape()


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
        self.redis_refusing = Gauge(
            "modelcache_redis_refusing",
            "1 while Redis is reachable but refuses this node's writes (out of memory, read-only, ACL...).",
            registry=r,
        )
        self.redis_refusals = Counter(
            "modelcache_redis_refusals_total",
            "Redis commands of the background sync refused by a reachable Redis, by Redis' error code.",
            ["reason"],
            registry=r,
        )
        self.degraded = Gauge(
            "modelcache_degraded",
            "1 while /readyz lists a degraded state (cluster sync failing, loads wedged or backlogged); "
            "the node still serves.",
            registry=r,
        )
        self.heavy_starved = Counter(
            "modelcache_heavy_starved_total",
            "Times a heavy model's predicts starved under SCHED_IDLE (under 1/10 of a CPU) and moved to "
            "nice +10 until the CPUs have room again; the log names the model.",
            registry=r,
        )
        self.heavy_worker_failures = Counter(
            "modelcache_heavy_worker_failures_total",
            "HEAVY_PREDICT_SCHED=process: times a heavy predict worker process failed to start or load a "
            "model, died, hung or answered junk; each time the batch was predicted in the node and the "
            "worker replaced. The log says what happened.",
            registry=r,
        )
        self.background_errors = Counter(
            "modelcache_background_errors_total",
            "Errors caught at the top of a background thread (cluster sync, cache sweep); it goes on.",
            ["thread"],
            registry=r,
        )
        # -- warm restart (node.restore) --
        self.restored_models = Counter(
            "modelcache_restored_models_total",
            "Models loaded at start from the warm-restart state file (MODELCACHE_STATE_DIR).",
            registry=r,
        )
        self.restore_skipped = Counter(
            "modelcache_restore_skipped_total",
            "Saved models not restored, by reason: gone (not in the registry), failed (load failed), "
            "room (beyond the cache's capacity or byte budget), budget (MODELCACHE_RESTORE_BUDGET_S "
            "ran out; the load finishes after /readyz turned ready).",
            ["reason"],
            registry=r,
        )
        self.restore_seconds = Gauge(
            "modelcache_restore_seconds",
            "How long the last warm restart's restore held /readyz back.",
            registry=r,
        )
        self.served_version = _CachedTypesGauge(
            "modelcache_served_version_info",
            "1 for the version this node serves by default for each model type it has cached.",
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

        self.model_series: ModelSeries | None = None  # set by track_cached
        self._batch_rows_children: dict[str, Any] = {}

        # process_resident_memory_bytes & co., to set RSS against the byte budget.
        # (The global registry has them already; registering twice would fail.)
        self.store = StoreMetrics(r)
        if r is not REGISTRY:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def observe_prediction(self, model_type: str, seconds: float, rows: int, version: str) -> None:
        """One predict call of `rows` rows, whichever protocol it came in by.

        `version` is bounded: only versions that were loaded (cached) and answered get here.
        """
        # With tracing on, a sampled request's trace id is the exemplar (node.tracing).
        self.predict_seconds.labels(model_type, version).observe(seconds, tracing.exemplar())
        self.predictions.labels(model_type, version).inc(rows)

    def observe_prediction_error(self, model_type: str, rows: int, version: str) -> None:
        """One predict call of `rows` rows that raised."""
        self.prediction_errors.labels(model_type, version).inc(rows)

    def observe_batch_rows(self, model_type: str, rows: int) -> None:
        """One coalesced predict call of `rows` rows (the child is resolved once per cached type)."""
        child = self._batch_rows_children.get(model_type)
        if child is None:
            child = self._batch_rows_children[model_type] = self.batch_rows.labels(model_type)
        child.observe(rows)

    def per_model_families(self) -> list[MetricWrapperBase]:
        """The families whose `model_type` series follow the cache.

        Not the version and canary gauges: the resolver sets those once per change. Pins and
        canaries are bounded by what operators set; the served version is filtered at export
        (`_CachedTypesGauge`).
        """
        return [
            self.cache_hits,
            self.cache_misses,
            self.cache_evictions,
            self.model_load_seconds,
            self.model_load_failures,
            self.predict_seconds,
            self.predictions,
            self.prediction_errors,
            self.batch_rows,
            self.fallbacks,
        ]

    def evicted(self, model_type: str, reason: str) -> None:
        """The cache's eviction hook: count it, then let the series follow the cache."""
        self.cache_evictions.labels(model_type, reason).inc()
        if self.model_series is not None:
            self.model_series.prune(departed=model_type)

    def track_cached(self, entries: Callable[[], list[tuple[str, str]]]) -> None:
        """Export what the cache holds (bounded by its capacity); per-model series follow it."""

        def cached_types() -> set[str]:
            return {model_type for model_type, _ in entries()}

        self.served_version.cached_types = cached_types
        self.model_series = ModelSeries(
            self.per_model_families(),
            cached_types=cached_types,
            retain=self._capacity,
            on_drop=lambda model_type: self._batch_rows_children.pop(model_type, None),
        )
        self.registry.register(_CachedModels(entries, self.model_series.prune))

    def _capacity(self) -> int:
        """The cache's capacity in models, as the service set it on its gauge."""
        return int(self.cache_capacity_models.collect()[0].samples[0].value)

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


STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class StoreMetrics:
    """Object-store requests and the disk tier (coordinator.registry's StoreObserver and TierObserver).

    Labels are bounded: `operation` is one of get, head, list, put, put_part, delete, abort;
    `outcome` ok, not_found or error; `direction` upload or download.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "modelcache_store_requests_total",
            "Requests to the object-store registry, by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "modelcache_store_bytes_total",
            "Bytes moved to or from the object store.",
            ["direction"],
            registry=r,
        )
        self.seconds = Histogram(
            "modelcache_store_request_seconds",
            "Duration of object-store requests (a download until its last byte).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.tier_bytes = Gauge(
            "modelcache_disk_tier_bytes", "Bytes of verified artifacts on the disk tier.", registry=r
        )
        self.tier_hits = Counter(
            "modelcache_disk_tier_hits_total", "Artifact reads served by the local disk tier.", registry=r
        )
        self.tier_misses = Counter(
            "modelcache_disk_tier_misses_total", "Artifact reads the disk tier could not serve.", registry=r
        )

    def store_request(self, operation: str, outcome: str, seconds: float) -> None:
        self.requests.labels(operation, outcome).inc()
        self.seconds.labels(operation).observe(seconds)

    def store_bytes(self, direction: str, nbytes: int) -> None:
        self.bytes.labels(direction).inc(nbytes)

    def disk_tier_lookup(self, hit: bool) -> None:
        (self.tier_hits if hit else self.tier_misses).inc()

    def disk_tier_size(self, nbytes: int) -> None:
        self.tier_bytes.set(nbytes)
