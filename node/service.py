"""The request path: which model serves a request, loaded on a miss, with fallback and canaries.

The HTTP layers (v1, V2, KServe) call `get`; it asks the resolver (node.resolver:
pins, canary, default, failure TTL, fallback order) which version to serve and
gets it through `Loads` (node.loads: the cache, bounded and timed loads). Changes
(reloads, pins, canaries) are a sibling over the same `Loads`: node.reloads.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from coordinator.errors import ModelCacheError, VersionNotFound
from coordinator.versions import normalize_version
from node import tracing
from node.errors import LoadRateLimited, ModelLoadError
from node.loader import LoadBudget
from node.loads import Loads
from node.metrics import NodeMetrics
from node.resolver import Key, Resolver
from node.runtimes import LoadedModel

log = logging.getLogger("modelcache.service")

__all__ = ["ModelService", "Resolved"]


@dataclass(frozen=True)
class Resolved:
    """What one request is served with."""

    model: LoadedModel
    version: str
    cached: bool
    fallback_from: str | None = None
    canary: bool = False


class ModelService:
    """Serves each request from the cache, loading, falling back and routing canaries as needed."""

    def __init__(
        self,
        loads: Loads,
        resolver: Resolver,
        metrics: NodeMetrics,
        *,
        ondemand_loads_per_min: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loads, self.resolver, self.metrics = loads, resolver, metrics
        self.ondemand = LoadBudget(ondemand_loads_per_min, clock)
        self._clock = clock
        self._requests: Counter[str] = Counter()

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
        with tracing.stage("resolve", **{"modelcache.model_type": model_type}) as span:
            resolved = None
            if version is None:
                resolved = await self._canary(model_type, routing_key)
            if resolved is None:
                resolved = await self._get(model_type, version, limit_loads)
            if span is not None:
                span.set_attribute("modelcache.version", resolved.version)
        self._requests[model_type] += 1
        return resolved

    async def _canary(self, model_type: str, routing_key: str | None) -> Resolved | None:
        """The canary for this request, or None; a canary that cannot load never fails a request."""
        version = self.resolver.canary_pick(model_type, routing_key)
        if version is None:
            return None
        key = (model_type, version)
        try:  # an internal routing decision: never charged to the on-demand budget
            model, hit = await self.loads.lookup(key)
        except ModelCacheError as exc:
            self.resolver.mark_failed(key, str(exc))
            log.warning("canary %s %s cannot load, serving the default instead: %s", *key, exc)
            return None
        return Resolved(model, version, hit, canary=True)

    async def _get(self, model_type: str, version: str | None, limit_loads: bool) -> Resolved:
        deadline = self._clock() + self.loads.load_timeout_s
        if version is not None:
            self.resolver.check_known(model_type)
            version = normalize_version(version)
            key = (model_type, version)
            if limit_loads:
                self._spend_ondemand(key)
            model, hit = await self.loads.lookup(key)
            return Resolved(model, version, hit)
        version = self.resolver.default_version(model_type)
        key = (model_type, version)
        if not self.resolver.recently_failed(key):
            try:
                model, hit = await self.loads.lookup(key)
                return Resolved(model, version, hit)
            except ModelLoadError as exc:
                self.resolver.mark_failed(key, exc.detail)
            except VersionNotFound:
                # Removed from the registry since it became the default: fall back, not 404.
                self.resolver.mark_failed(key, "the version was removed from the registry")
        return await self._fallback(model_type, version, deadline)

    def _spend_ondemand(self, key: Key) -> None:
        if (
            key in self.loads.cache
            or self.loads.cache.loading(key)
            or self.resolver.is_default_or_pinned(key)
        ):
            return
        wait = self.ondemand.take()
        if wait:
            log.warning("on-demand load of %s %s refused: budget spent", *key)
            raise LoadRateLimited(key[0], key[1], self.ondemand.per_minute, wait)

    async def _fallback(self, model_type: str, failed: str, deadline: float) -> Resolved:
        reason = self.resolver.failure((model_type, failed))
        for candidate in self.resolver.fallback_candidates(model_type, failed):
            key = (model_type, candidate)
            remaining = deadline - self._clock()
            # One request waits at most one load timeout in all: past it, only cached fallbacks.
            if remaining <= 0 and key not in self.loads.cache:
                continue
            try:
                model, hit = await self.loads.lookup(key, max(remaining, 0.0))
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
        """Load the default version of each type into the free slots; return what loaded.

        What is cached already (restored by a warm restart, loaded for a pin) stays: warm-up
        loads only while a slot is free, so it does not push those models out.
        """
        loaded = []
        cache = self.loads.cache
        for model_type in list(model_types)[: cache.capacity]:
            if len(cache) >= cache.capacity:
                break
            try:
                version = self.resolver.default_version(model_type)
                if (model_type, version) in cache:
                    continue
                self.loads.get_or_load((model_type, version))
                loaded.append(f"{model_type}:{version}")
            except Exception as exc:
                log.error("warm-up of %s failed: %s", model_type, exc)
        return loaded

    def load(self, model_type: str, version: str | None = None) -> str:
        """Make sure a model is cached (repository 'load'); return its version."""
        version = normalize_version(version) if version else self.resolver.default_version(model_type)
        self.resolver.check_known(model_type)
        self.loads.get_or_load((model_type, version))
        return version

    def request_counts(self) -> dict[str, int]:
        """Requests served per model type since start (for cluster-wide popularity)."""
        return dict(self._requests)
