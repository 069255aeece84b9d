"""Reloads, pins and canaries on this node: load the new version beside the old, swap, report the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ModelCacheError, ModelNotFound
from coordinator.versions import normalize_version, validate_model_type
from node.cache import ModelCache
from node.errors import ModelLoadError
from node.loader import Loader
from node.metrics import NodeMetrics
from node.resolver import Key, Resolver
from node.runtime import LoadedModel

log = logging.getLogger("modelcache.service")


@dataclass(frozen=True)
class Outcome:
    """The result of applying a reload or pin on this node."""

    model_type: str
    outcome: str  # "ok" | "failed"
    version: str | None  # the version served by default afterwards
    previous: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "outcome": self.outcome,
            "version": self.version,
            "previous": self.previous,
            "detail": self.detail,
        }


class Reloads:
    """ModelService's reload, pin and canary methods (mixed into node.service)."""

    loader: Loader
    metrics: NodeMetrics
    resolver: Resolver
    cache: ModelCache[Key, LoadedModel]

    def _bounded(self, key: Key, fn: Callable[[], Any]) -> Any:
        raise NotImplementedError  # ModelService's

    def _load(
        self, key: Key, replacing: tuple[Key, ...] = (), protect: tuple[Key, ...] = ()
    ) -> tuple[LoadedModel, int]:
        raise NotImplementedError  # ModelService's

    # -- reload and pins (run in a worker thread) ---------------------------
    def reload(
        self, model_type: str | None = None, version: str | None = None, *, source: str = "api"
    ) -> list[Outcome]:
        """Reload one model type, one exact version, or every model type this node serves."""
        if model_type is None:
            types = sorted({k[0] for k in self.cache.cached_keys()} | set(self.resolver.serving()))
            return [self._apply(mt, source) for mt in types]
        validate_model_type(model_type)
        if version is not None:
            return [self._refresh_exact(model_type, normalize_version(version), source)]
        return [self._apply(model_type, source)]

    def set_pins(self, pins: Mapping[str, str], *, source: str = "cluster") -> list[Outcome]:
        """Adopt a new set of pins; each changed model type switches version (load beside, swap)."""
        return [self._apply(mt, source) for mt in self.resolver.set_pins(pins)]

    def _apply(self, model_type: str, source: str) -> Outcome:
        """Re-resolve the default of `model_type`, switch to it without a gap, re-check its canary."""
        outcome = self._apply_default(model_type, source)
        canary = self.resolver.canaries().get(model_type)
        if canary is None or outcome.outcome != "ok":
            return outcome
        version = canary[0]
        try:  # a reload re-reads the registry: a canary version removed or altered since must stop
            self._bounded((model_type, version), lambda: self.loader.verify(model_type, version))
        except (ModelLoadError, ModelNotFound) as exc:
            self.resolver.clear_canary(model_type)
            self.resolver.mark_failed((model_type, version), str(exc))
            self.cache.evict((model_type, version))
            detail = f"{outcome.detail}; canary {version} ended ({exc}): 100% to {outcome.version}"
            log.error("%s %s: %s", source, model_type, detail)  # the reload itself is already counted
            return Outcome(model_type, "failed", outcome.version, outcome.previous, detail)
        return outcome

    def _apply_default(self, model_type: str, source: str) -> Outcome:
        previous = self.resolver.served(model_type)
        try:
            target = self.resolver.target(model_type)
        except ModelNotFound as exc:
            return self._outcome(source, Outcome(model_type, "failed", previous, previous, str(exc)))
        key = (model_type, target)
        cached_here = any(k[0] == model_type for k in self.cache.cached_keys())
        if not cached_here:
            # Nothing to swap: the next request loads the new default lazily. Still check
            # the artifact's checksum, so a corrupt target is refused here as on nodes that load it.
            try:
                self._bounded(key, lambda: self.loader.verify(model_type, target))
            except (ModelLoadError, ModelNotFound) as exc:
                detail = f"{exc}; still serving {previous}" if previous else str(exc)
                return self._outcome(source, Outcome(model_type, "failed", previous, previous, detail))
            self.resolver.clear_failed(key)
            self.resolver.set_default(model_type, target)
            return self._outcome(
                source,
                Outcome(model_type, "ok", target, previous, "not cached on this node; loads on use"),
            )
        remove = ((model_type, previous),) if previous and previous != target else ()
        try:
            model, cost = self._bounded(key, lambda: self._load(key, replacing=remove or (key,)))
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            detail = f"{exc}; still serving {previous}" if previous else str(exc)
            return self._outcome(source, Outcome(model_type, "failed", previous, previous, detail))
        self.cache.replace(key, model, cost, remove)
        self.resolver.clear_failed(key)
        self.resolver.set_default(model_type, target)
        return self._outcome(source, Outcome(model_type, "ok", target, previous, "loaded and swapped in"))

    # -- canaries (run in a worker thread) --------------------------------------
    def set_canary(
        self, model_type: str, version: str, percent: float, *, source: str = "cluster"
    ) -> Outcome:
        """Load `version` beside the default, then send `percent`% of default requests to it.

        If it cannot be loaded, no canary runs here (100% to the default) and the outcome
        says why: no request ever waits on, or fails because of, a canary's load.
        """
        version = normalize_version(version)
        key = (model_type, version)
        try:
            served: str | None = self.resolver.default_version(model_type)
        except ModelCacheError:
            served = self.resolver.served(model_type)
        try:
            if key not in self.cache:
                # Beside the default: making room for the canary never evicts what serves now.
                keep = ((model_type, served),) if served else ()
                model, cost = self._bounded(key, lambda: self._load(key, protect=keep))
                self.cache.replace(key, model, cost)
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            self.resolver.clear_canary(model_type)
            self.resolver.mark_failed(key, str(exc))
            detail = f"canary {version} not loaded ({exc}); sending 100% to {served}"
            return self._outcome(source, Outcome(model_type, "failed", served, served, detail))
        self.resolver.clear_failed(key)
        self.resolver.set_canary(model_type, version, percent)
        detail = f"canary {version} loaded beside {served}: {percent:g}% of requests naming no version"
        return self._outcome(source, Outcome(model_type, "ok", version, served, detail))

    def clear_canary(self, model_type: str, *, source: str = "cluster") -> Outcome:
        """End the canary of `model_type` (100% to the default); drop its model unless it serves."""
        old = self.resolver.clear_canary(model_type)
        served = self.resolver.served(model_type)
        if old is not None and old != served and old != self.resolver.pin(model_type):
            self.cache.evict((model_type, old))
        detail = f"canary {old} ended; 100% to {served}" if old else "no canary ran on this node"
        return self._outcome(source, Outcome(model_type, "ok", served, served, detail))

    def canaries(self) -> dict[str, tuple[str, float]]:
        return self.resolver.canaries()

    def _refresh_exact(self, model_type: str, version: str, source: str) -> Outcome:
        """Load `version` afresh beside any cached copy and swap it in; the default is unchanged."""
        previous = self.resolver.served(model_type)
        key = (model_type, version)
        try:
            model, cost = self._bounded(key, lambda: self._load(key, replacing=(key,)))
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            return self._outcome(source, Outcome(model_type, "failed", previous, previous, str(exc)))
        self.cache.replace(key, model, cost)
        self.resolver.clear_failed(key)
        return self._outcome(
            source, Outcome(model_type, "ok", previous, previous, f"{version} loaded and swapped in")
        )

    def _outcome(self, source: str, outcome: Outcome) -> Outcome:
        self.metrics.reloads.labels(source, outcome.outcome).inc()
        if outcome.outcome == "ok":
            log.info("%s %s: %s", source, outcome.model_type, outcome.detail)
        else:
            log.error("%s %s failed: %s", source, outcome.model_type, outcome.detail)
        return outcome
