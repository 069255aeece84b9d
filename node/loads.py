"""Load into the cache: bounded (the load pool), timed (LOAD_TIMEOUT_S), degraded or not (/readyz body).

The request path (node.service) and the change path (node.reloads) are siblings
over one `Loads`: both get models into the one cache through here, so a load is
counted, timed, bounded and charged against the byte budget the same way
whichever of them asked. The cache's idle-TTL sweep runs here too: it is the
cache's upkeep, and its health is load health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from prometheus_client import Gauge

from coordinator.errors import ModelNotFound
from coordinator.registry import ModelMetadata
from coordinator.versions import normalize_version
from node import memory, tracing
from node.cache import ModelCache
from node.errors import LoadTimeout, ModelTooLarge
from node.loader import Loader, LoadPool
from node.metrics import NodeMetrics
from node.periodic import Periodic
from node.policies import Reason
from node.resolver import Key
from node.runtimes import LoadedModel
from node.views import cache_stats_view

log = logging.getLogger("modelcache.service")

__all__ = ["Loads"]


class Loads:
    """The node's cache and the bounded, timed loads that fill it."""

    def __init__(
        self,
        loader: Loader,
        metrics: NodeMetrics,
        *,
        cache_size: int = 3,
        cache_max_bytes: int | None = None,
        cache_policy: str = "lru",
        cache_idle_ttl_s: float | None = None,
        load_timeout_s: float = 60.0,
        load_workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sweep: bool = True,
    ) -> None:
        self.loader, self.metrics = loader, metrics
        self.load_timeout_s = load_timeout_s
        self.pool = LoadPool(load_workers)
        self.cache: ModelCache[Key, LoadedModel] = ModelCache(
            cache_size,
            cache_max_bytes,
            on_evict=self._on_evict,
            submit=lambda key, run: self.pool.submit(run, f"{key[0]} {key[1]}"),
            policy=cache_policy,
            idle_ttl_s=cache_idle_ttl_s,
            timer=clock,
        )
        metrics.cache_capacity_models.set(cache_size)
        metrics.cache_max_bytes.set(cache_max_bytes or 0)
        metrics.cached_models.set_function(lambda: len(self.cache))
        metrics.cache_bytes.set_function(lambda: self.cache.total_bytes)
        metrics.track_cached(self.cache.cached_keys)
        metrics.track_hit_ratio_curve(self.cache.hit_ratio_estimates)
        Gauge(
            "modelcache_loads_in_progress",
            "Model loads running on this node's load pool now (stuck ones included).",
            registry=metrics.registry,
        ).set_function(lambda: len(self.pool.in_progress()))
        # Idle entries also go on access; the sweep drops them when nothing is requested at all.
        self.sweeper: Periodic | None = None
        if cache_idle_ttl_s is not None and sweep:
            interval = min(max(cache_idle_ttl_s / 4, 0.05), 30.0)
            self.sweeper = Periodic("cache-sweep", self.sweep, interval, metrics.background_errors)
            self.sweeper.start()

    def close(self) -> None:
        """Stop the background sweep (the node's shutdown)."""
        if self.sweeper is not None:
            self.sweeper.stop()

    # -- loading -------------------------------------------------------------
    async def lookup(self, key: Key, timeout: float | None = None) -> tuple[LoadedModel, bool]:
        """The cached model, or one load of it (single flight); (model, hit). Counts hits and misses."""
        timeout = self.load_timeout_s if timeout is None else timeout
        if tracing.recording():
            return await self._traced_lookup(key, timeout)
        return await self._lookup(key, timeout, lambda: self.load(key))

    async def _traced_lookup(self, key: Key, timeout: float) -> tuple[LoadedModel, bool]:
        """`lookup` as a `cache.hit` or `cache.miss` span; a load it starts is its child span."""
        attributes = {"modelcache.model_type": key[0], "modelcache.version": key[1]}
        with tracing.cache_lookup(**attributes) as hit:
            model, was_hit = await self._lookup(
                key, timeout, tracing.stage_in_thread("load", lambda: self.load(key))
            )
            hit(was_hit)
        return model, was_hit

    async def _lookup(
        self, key: Key, timeout: float, load: Callable[[], tuple[LoadedModel, int]]
    ) -> tuple[LoadedModel, bool]:
        try:
            model, hit = await self.cache.aget_or_load(key, load, timeout)
        except TimeoutError:
            self.metrics.cache_misses.labels(key[0]).inc()
            self.metrics.model_load_failures.labels(key[0], "timeout").inc()
            log.error("load of %s %s did not finish within %.1fs", *key, timeout)
            raise LoadTimeout(*key, self.load_timeout_s) from None
        except Exception:
            self.metrics.cache_misses.labels(key[0]).inc()  # a failed lookup is a miss too
            raise
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(key[0]).inc()
        return model, hit

    def get_or_load(self, key: Key) -> LoadedModel:
        """`lookup` for a worker thread (warm-up, the V2 repository's load); not counted as a request."""
        try:
            return self.cache.get_or_load(key, lambda: self.load(key), self.load_timeout_s)[0]
        except TimeoutError:
            self.metrics.model_load_failures.labels(key[0], "timeout").inc()
            raise LoadTimeout(*key, self.load_timeout_s) from None

    def prefetch(self, key: Key, uses: int = 1) -> Future[LoadedModel]:
        """Start loading `key` on the load pool, no request counted (a warm restart, node.restore)."""
        return self.cache.prefetch(key, lambda: self.load(key), uses)

    def bounded(self, key: Key, fn: Callable[[], Any]) -> Any:
        """Run `fn` (a load or a check of `key`) on the load pool; LoadTimeout beyond the bound."""
        try:
            return self.pool.run(fn, self.load_timeout_s, f"{key[0]} {key[1]}")
        except TimeoutError:
            self.metrics.model_load_failures.labels(key[0], "timeout").inc()
            raise LoadTimeout(*key, self.load_timeout_s) from None

    def verify(self, key: Key) -> None:
        """Check `key`'s artifact against its checksum without loading it (bounded)."""
        self.bounded(key, lambda: self.loader.verify(*key))

    def load(
        self, key: Key, replacing: tuple[Key, ...] = (), protect: tuple[Key, ...] = ()
    ) -> tuple[LoadedModel, int]:
        """Load `key` after making room for it (never evicting `replacing` or `protect`)."""
        model_type, version = key
        started = time.perf_counter()

        budget = self.cache.max_bytes

        def make_room(meta: ModelMetadata) -> None:
            # Evict first, so the new model is deserialized only when the budget allows it.
            # A reload's new version takes the old one's slot, but both are in memory until the swap.
            slots = 0 if any(old in self.cache for old in replacing) else 1
            estimate = memory.estimate_cost(meta)
            if budget is not None and estimate > budget:
                # The estimate is an upper bound: the model may fit after all, but making room for
                # it would empty the cache for a model that is then likely refused (below).
                estimate = 0
            self.cache.reserve(key, estimate, protect=replacing + protect, slots=slots)
            memory.trim()  # what was just evicted is freed now (unless a request still holds it)

        try:
            model, cost = self.loader.load_charged(model_type, version, make_room)
        except ModelNotFound:
            raise
        except Exception as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "code", "error")
            self.metrics.model_load_failures.labels(model_type, reason).inc()
            log.error("load failed: %s", exc)
            raise
        if budget is not None and cost > budget:
            # Cached, it would push out every other model and still break the budget.
            refused = ModelTooLarge(model_type, version, cost, budget)
            self.metrics.model_load_failures.labels(model_type, refused.reason).inc()
            log.error("load refused: %s", refused)
            raise refused
        self.metrics.model_load_seconds.labels(model_type).observe(time.perf_counter() - started)
        log.info(
            "loaded %s %s (%d bytes on disk, charged %d resident)",
            model_type,
            version,
            model.meta.size_bytes,
            cost,
        )
        return model, cost

    def unload(self, model_type: str, version: str | None = None) -> list[str]:
        """Drop cached versions of a model type (all, or one); return those dropped."""
        keys = [k for k in self.cache.cached_keys() if k[0] == model_type]
        if version is not None:
            keys = [k for k in keys if k[1] == normalize_version(version)]
        dropped = [k[1] for k in keys if self.cache.evict(k)]
        memory.trim()
        return dropped

    # -- health and views ------------------------------------------------------
    def health(self, stuck_after_s: float | None = None) -> list[str]:
        """Problems with loading (and the cache sweep), listed in /readyz's body (the node stays ready)."""
        limit = self.load_timeout_s if stuck_after_s is None else stuck_after_s
        running = self.pool.in_progress()
        stuck = [f"{label} ({seconds:.0f}s)" for label, seconds in running if seconds > limit]
        problems = []
        if stuck:
            problems.append(f"{len(stuck)} load(s) stuck longer than {limit:g}s: {', '.join(stuck)}")
        if len(running) >= self.pool.workers and self.pool.queued:
            problems.append(
                f"all {self.pool.workers} load workers busy (MODELCACHE_LOAD_WORKERS), "
                f"{self.pool.queued} load(s) waiting"
            )
        sweep = self.sweeper.problem() if self.sweeper is not None else None
        if sweep:
            problems.append(sweep)
        return problems

    def cached_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for mt, v in self.cache.cached_keys():
            out.setdefault(mt, []).append(v)
        return out

    def stats(self) -> dict[str, Any]:
        """What /api/v1/cache/stats returns (node.views.cache_stats_view)."""
        return cache_stats_view(self.cache.stats())

    # -- upkeep ----------------------------------------------------------------
    def sweep(self) -> None:
        """Drop idle models and give their heap back (the periodic part of the idle TTL)."""
        if self.cache.expire():
            memory.trim()

    def _on_evict(self, key: Key, _model: LoadedModel, reason: Reason) -> None:
        self.metrics.evicted(key[0], reason.value)  # counts it; per-model series follow the cache
        log.info("evicted %s %s (%s)", *key, reason.value)
