"""The node's data plane, as a thin facade: the cache, the resolver, loads and reloads.

The HTTP layer calls this; this asks the resolver (node.resolver: pins,
default, failure TTL, fallback order) which version to serve, gets it from
the cache (node.cache over a policy from node.policies), whose loads go
through the loader on the load pool, and charges each model its resident
cost against the byte budget (node.memory). Reloads load the new version
beside the old one and swap (invariant 2): reloads, pins and canaries live in
node.reloads, views in node.views.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from coordinator.errors import ModelCacheError, ModelNotFound, VersionNotFound
from coordinator.registry import ModelMetadata, Registry
from coordinator.versions import normalize_version
from node import memory
from node.cache import ModelCache
from node.errors import LoadRateLimited, LoadTimeout, ModelLoadError
from node.loader import LoadBudget, Loader, LoadPool
from node.metrics import NodeMetrics
from node.periodic import Periodic
from node.policies import Reason
from node.reloads import Outcome, Reloads
from node.resolver import Key, Resolver
from node.runtime import LoadedModel
from node.views import cache_stats_view, models_view

log = logging.getLogger("modelcache.service")


@dataclass(frozen=True)
class Resolved:
    """What one request is served with."""

    model: LoadedModel
    version: str
    cached: bool
    fallback_from: str | None = None
    canary: bool = False


__all__ = ["ModelService", "Outcome", "Resolved"]


class ModelService(Reloads):
    """Serves models from the cache, loading, falling back and reloading as needed."""

    def __init__(
        self,
        registry: Registry,
        loader: Loader,
        metrics: NodeMetrics,
        *,
        cache_size: int = 3,
        cache_max_bytes: int | None = None,
        cache_policy: str = "lru",
        cache_idle_ttl_s: float | None = None,
        load_failure_ttl_s: float = 30.0,
        load_timeout_s: float = 60.0,
        load_workers: int = 4,
        ondemand_loads_per_min: int = 30,
        pins: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sweep: bool = True,
    ) -> None:
        self.registry, self.loader, self.metrics = registry, loader, metrics
        self.load_timeout_s = load_timeout_s
        self.pool = LoadPool(load_workers)
        self.ondemand = LoadBudget(ondemand_loads_per_min, clock)
        self.resolver = Resolver(registry, metrics, pins=pins, failure_ttl_s=load_failure_ttl_s, clock=clock)
        self.cache: ModelCache[Key, LoadedModel] = ModelCache(
            cache_size,
            cache_max_bytes,
            on_evict=self._on_evict,
            submit=lambda key, run: self.pool.submit(run, f"{key[0]} {key[1]}"),
            policy=cache_policy,
            idle_ttl_s=cache_idle_ttl_s,
            timer=clock,
        )
        self._clock = clock
        self._requests: Counter[str] = Counter()
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
            self.sweeper = Periodic("cache-sweep", self._sweep, interval, metrics.background_errors)
            self.sweeper.start()

    def close(self) -> None:
        """Stop the background sweep (the node's shutdown)."""
        if self.sweeper is not None:
            self.sweeper.stop()

    # -- resolution --------------------------------------------------------
    @property
    def pins(self) -> dict[str, str]:
        return self.resolver.pins

    def default_version(self, model_type: str) -> str:
        """The version served when a request names none: pin, else latest stable."""
        return self.resolver.default_version(model_type)

    def _recently_failed(self, key: Key) -> bool:
        return self.resolver.recently_failed(key)

    # -- the request path --------------------------------------------------
    async def get(
        self,
        model_type: str,
        version: str | None = None,
        *,
        limit_loads: bool = True,
        routing_key: str | None = None,
    ) -> Resolved:
        """The model for a request; loads on a miss, falls back if the default cannot load.

        With `limit_loads`, a miss on an explicit version that is not the default
        spends the on-demand load budget (LoadRateLimited when it is empty), so
        clients cannot turn the cache into a load/evict loop. Hits and the default
        (pinned or latest) version are never limited; internal callers that route
        to a version themselves (e.g. a canary) pass `limit_loads=False`.
        A request that names no version may go to the model type's canary: by the
        stable hash of `routing_key`, else by a random draw (node.resolver.in_canary).
        """
        resolved = None
        if version is None:
            resolved = await self._canary(model_type, routing_key)
        if resolved is None:
            resolved = await self._get(model_type, version, limit_loads)
        self._requests[model_type] += 1
        return resolved

    async def _canary(self, model_type: str, routing_key: str | None) -> Resolved | None:
        """The canary for this request, or None; a canary that cannot load never fails a request."""
        version = self.resolver.canary_pick(model_type, routing_key)
        if version is None:
            return None
        key = (model_type, version)
        try:  # an internal routing decision: never charged to the on-demand budget
            model, hit = await self._lookup(key)
        except ModelCacheError as exc:
            self.resolver.mark_failed(key, str(exc))
            log.warning("canary %s %s cannot load, serving the default instead: %s", *key, exc)
            return None
        return Resolved(model, version, hit, canary=True)

    async def _get(self, model_type: str, version: str | None, limit_loads: bool) -> Resolved:
        deadline = self._clock() + self.load_timeout_s
        if version is not None:
            self.resolver.check_known(model_type)
            version = normalize_version(version)
            key = (model_type, version)
            if limit_loads:
                self._spend_ondemand(key)
            model, hit = await self._lookup(key)
            return Resolved(model, version, hit)
        version = self.resolver.default_version(model_type)
        key = (model_type, version)
        if not self.resolver.recently_failed(key):
            try:
                model, hit = await self._lookup(key)
                return Resolved(model, version, hit)
            except ModelLoadError as exc:
                self.resolver.mark_failed(key, exc.detail)
            except VersionNotFound:
                # Removed from the registry since it became the default: fall back, not 404.
                self.resolver.mark_failed(key, "the version was removed from the registry")
        return await self._fallback(model_type, version, deadline)

    def _spend_ondemand(self, key: Key) -> None:
        if key in self.cache or self.cache.loading(key) or self.resolver.is_default_or_pinned(key):
            return
        wait = self.ondemand.take()
        if wait:
            log.warning("on-demand load of %s %s refused: budget spent", *key)
            raise LoadRateLimited(key[0], key[1], self.ondemand.per_minute, wait)

    async def _lookup(self, key: Key, timeout: float | None = None) -> tuple[LoadedModel, bool]:
        timeout = self.load_timeout_s if timeout is None else timeout
        try:
            model, hit = await self.cache.aget_or_load(key, lambda: self._load(key), timeout)
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

    def _bounded(self, key: Key, fn: Callable[[], Any]) -> Any:
        """Run `fn` (a load or a check of `key`) on the load pool; LoadTimeout beyond the bound."""
        try:
            return self.pool.run(fn, self.load_timeout_s, f"{key[0]} {key[1]}")
        except TimeoutError:
            self.metrics.model_load_failures.labels(key[0], "timeout").inc()
            raise LoadTimeout(*key, self.load_timeout_s) from None

    def _load(
        self, key: Key, replacing: tuple[Key, ...] = (), protect: tuple[Key, ...] = ()
    ) -> tuple[LoadedModel, int]:
        """Load `key` after making room for it (never evicting `replacing` or `protect`)."""
        model_type, version = key
        started = time.perf_counter()

        def make_room(meta: ModelMetadata) -> None:
            # Evict first, so the new model is deserialized only when the budget allows it.
            # A reload's new version takes the old one's slot, but both are in memory until the swap.
            slots = 0 if any(old in self.cache for old in replacing) else 1
            self.cache.reserve(key, memory.estimate_cost(meta), protect=replacing + protect, slots=slots)
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
        self.metrics.model_load_seconds.labels(model_type).observe(time.perf_counter() - started)
        log.info(
            "loaded %s %s (%d bytes on disk, charged %d resident)",
            model_type,
            version,
            model.meta.size_bytes,
            cost,
        )
        return model, cost

    async def _fallback(self, model_type: str, failed: str, deadline: float) -> Resolved:
        reason = self.resolver.failure((model_type, failed))
        for candidate in self.resolver.fallback_candidates(model_type, failed):
            key = (model_type, candidate)
            remaining = deadline - self._clock()
            # One request waits at most one load timeout in all: past it, only cached fallbacks.
            if remaining <= 0 and key not in self.cache:
                continue
            try:
                model, hit = await self._lookup(key, max(remaining, 0.0))
            except ModelLoadError as exc:
                self.resolver.mark_failed(key, exc.detail)
                continue
            except VersionNotFound:
                continue
            self.metrics.fallbacks.labels(model_type).inc()
            log.warning(
                "serving %s %s instead of %s, which cannot be loaded: %s",
                model_type,
                candidate,
                failed,
                reason,
            )
            return Resolved(model, candidate, hit, fallback_from=failed)
        raise ModelLoadError(model_type, failed, f"{reason}; no lower version could be loaded either")

    # -- warm-up, load, unload -------------------------------------------------
    def warm(self, model_types: Iterable[str]) -> list[str]:
        """Load the default version of each type (up to capacity); return what loaded."""
        loaded = []
        for model_type in list(model_types)[: self.cache.capacity]:
            try:
                version = self.resolver.default_version(model_type)
                self._get_or_load((model_type, version))
                loaded.append(f"{model_type}:{version}")
            except Exception as exc:
                log.error("warm-up of %s failed: %s", model_type, exc)
        return loaded

    def load(self, model_type: str, version: str | None = None) -> str:
        """Make sure a model is cached (repository 'load'); return its version."""
        version = normalize_version(version) if version else self.resolver.default_version(model_type)
        self.resolver.check_known(model_type)
        self._get_or_load((model_type, version))
        return version

    def _get_or_load(self, key: Key) -> LoadedModel:
        try:
            return self.cache.get_or_load(key, lambda: self._load(key), self.load_timeout_s)[0]
        except TimeoutError:
            self.metrics.model_load_failures.labels(key[0], "timeout").inc()
            raise LoadTimeout(*key, self.load_timeout_s) from None

    def load_health(self, stuck_after_s: float | None = None) -> list[str]:
        """Problems with loading (and the cache sweep), for /readyz: empty when nothing is wedged."""
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

    def unload(self, model_type: str, version: str | None = None) -> list[str]:
        """Drop cached versions of a model type (all, or one); return those dropped."""
        keys = [k for k in self.cache.cached_keys() if k[0] == model_type]
        if version is not None:
            keys = [k for k in keys if k[1] == normalize_version(version)]
        dropped = [k[1] for k in keys if self.cache.evict(k)]
        memory.trim()
        return dropped

    def _on_evict(self, key: Key, _model: LoadedModel, reason: Reason) -> None:
        self.metrics.cache_evictions.labels(key[0], reason.value).inc()
        log.info("evicted %s %s (%s)", *key, reason.value)

    def _sweep(self) -> None:
        """Drop idle models and give their heap back (the periodic part of the idle TTL)."""
        if self.cache.expire():
            memory.trim()

    # -- views -------------------------------------------------------------
    def served_version(self, model_type: str) -> str | None:
        """The version served by default now, if this node has resolved one."""
        return self.resolver.served(model_type)

    def serving(self) -> dict[str, str]:
        return self.resolver.serving()

    def request_counts(self) -> dict[str, int]:
        """Requests served per model type since start (for cluster-wide popularity)."""
        return dict(self._requests)

    def cached_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for mt, v in self.cache.cached_keys():
            out.setdefault(mt, []).append(v)
        return out

    def stats(self) -> dict[str, Any]:
        """What /api/v1/cache/stats returns (node.views.cache_stats_view)."""
        return cache_stats_view(self.cache.stats())

    def list_models(self) -> list[dict[str, Any]]:
        """Every model type; one whose files cannot be read is listed with an `error`."""
        return models_view(
            self.registry.scan(), self.resolver.pins, self.resolver.serving(), self.cached_versions()
        )
