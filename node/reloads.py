"""Changes on this node: reload, pin one model, canary. Load the new version beside the old, swap, report.

A sibling of the request path (node.service) over the same `Loads` (node.loads):
both fill one cache, this one only ever beside what serves (invariant 2). Each
change answers with an `Applied`, which the reconciler turns into the `ModelAck`
it writes to Redis and the admin API renders for `scope=node`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ModelCacheError, ModelNotFound
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Canary, ModelAck, Outcome
from node.errors import ModelLoadError
from node.loads import Loads
from node.metrics import NodeMetrics
from node.resolver import Resolver

log = logging.getLogger("modelcache.service")

__all__ = ["Applied", "Reloads"]


@dataclass(frozen=True)
class Applied:
    """The result of applying one change (reload, pin, canary) to one model type on this node."""

    model_type: str
    outcome: Outcome
    version: str | None
    """The version served by default afterwards (a canary's: the canary version)."""
    previous: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "outcome": self.outcome.value,
            "version": self.version,
            "previous": self.previous,
            "detail": self.detail,
        }

    def to_ack(
        self, *, epoch: str, seq: int, generation: int | None, propagation_ms: float | None = None
    ) -> ModelAck:
        """This outcome as the acknowledgement of change (epoch, seq), as written to Redis."""
        return ModelAck(
            model_type=self.model_type,
            outcome=self.outcome,
            version=self.version,
            previous=self.previous,
            detail=self.detail[:2000],
            epoch=epoch,
            seq=seq,
            generation=generation,
            propagation_ms=propagation_ms,
        )


class Reloads:
    """Reload, pin and canary on this node, over the shared loads and resolver."""

    def __init__(self, loads: Loads, resolver: Resolver, metrics: NodeMetrics) -> None:
        self.loads, self.resolver, self.metrics = loads, resolver, metrics
        self.cache = loads.cache

    # -- reload and pins (run in a worker thread) ---------------------------
    def reload(
        self, model_type: str | None = None, version: str | None = None, *, source: str = "api"
    ) -> list[Applied]:
        """Reload one model type, one exact version, or every model type this node serves."""
        if model_type is None:
            return [self._apply(mt, source) for mt in self.model_types()]
        validate_model_type(model_type)
        if version is not None:
            return [self._refresh_exact(model_type, normalize_version(version), source)]
        return [self._apply(model_type, source)]

    def set_pin(self, model_type: str, version: str | None, *, source: str = "cluster") -> Applied:
        """Pin `model_type` to `version` (None: unpin) here and switch to it (load beside, swap)."""
        if not self.resolver.set_pin(model_type, version):
            served = self.resolver.served(model_type)
            return Applied(model_type, Outcome.OK, served, served)
        return self._apply(model_type, source)

    # -- what this node serves -----------------------------------------------------
    def pins(self) -> dict[str, str]:
        return self.resolver.pins

    def served(self, model_type: str) -> str | None:
        """The version served by default now, if this node has resolved one."""
        return self.resolver.served(model_type)

    def serving(self) -> dict[str, str]:
        return self.resolver.serving()

    def model_types(self) -> list[str]:
        """Every model type this node caches or has resolved: what `reload` of everything touches."""
        return sorted({k[0] for k in self.cache.cached_keys()} | set(self.resolver.serving()))

    def _apply(self, model_type: str, source: str) -> Applied:
        """Re-resolve the default of `model_type`, switch to it without a gap, re-check its canary."""
        outcome = self._apply_default(model_type, source)
        canary = self.resolver.canaries().get(model_type)
        if canary is None or not outcome.ok:
            return outcome
        version = canary.version
        try:  # a reload re-reads the registry: a canary version removed or altered since must stop
            self.loads.verify((model_type, version))
        except (ModelLoadError, ModelNotFound) as exc:
            self.resolver.clear_canary(model_type)
            self.resolver.mark_failed((model_type, version), str(exc))
            self.cache.evict((model_type, version))
            detail = f"{outcome.detail}; canary {version} ended ({exc}): 100% to {outcome.version}"
            log.error("%s %s: %s", source, model_type, detail)  # the reload itself is already counted
            return Applied(model_type, Outcome.FAILED, outcome.version, outcome.previous, detail)
        return outcome

    def _apply_default(self, model_type: str, source: str) -> Applied:
        previous = self.resolver.served(model_type)
        try:
            target = self.resolver.target(model_type)
        except ModelNotFound as exc:
            return self._outcome(source, Applied(model_type, Outcome.FAILED, previous, previous, str(exc)))
        key = (model_type, target)
        cached_here = any(k[0] == model_type for k in self.cache.cached_keys())
        if not cached_here:
            # Nothing to swap: the next request loads the new default lazily. Still check
            # the artifact's checksum, so a corrupt target is refused here as on nodes that load it.
            try:
                self.loads.verify(key)
            except (ModelLoadError, ModelNotFound) as exc:
                detail = f"{exc}; still serving {previous}" if previous else str(exc)
                return self._outcome(source, Applied(model_type, Outcome.FAILED, previous, previous, detail))
            self.resolver.clear_failed(key)
            self.resolver.set_default(model_type, target)
            return self._outcome(
                source,
                Applied(model_type, Outcome.OK, target, previous, "not cached on this node; loads on use"),
            )
        remove = ((model_type, previous),) if previous and previous != target else ()
        try:
            model, cost = self.loads.bounded(key, lambda: self.loads.load(key, replacing=remove or (key,)))
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            detail = f"{exc}; still serving {previous}" if previous else str(exc)
            return self._outcome(source, Applied(model_type, Outcome.FAILED, previous, previous, detail))
        self.cache.replace(key, model, cost, remove)
        self.resolver.clear_failed(key)
        self.resolver.set_default(model_type, target)
        return self._outcome(
            source, Applied(model_type, Outcome.OK, target, previous, "loaded and swapped in")
        )

    # -- canaries (run in a worker thread) --------------------------------------
    def set_canary(
        self, model_type: str, version: str, percent: float, *, source: str = "cluster"
    ) -> Applied:
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
                model, cost = self.loads.bounded(key, lambda: self.loads.load(key, protect=keep))
                self.cache.replace(key, model, cost)
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            self.resolver.clear_canary(model_type)
            self.resolver.mark_failed(key, str(exc))
            detail = f"canary {version} not loaded ({exc}); sending 100% to {served}"
            return self._outcome(source, Applied(model_type, Outcome.FAILED, served, served, detail))
        self.resolver.clear_failed(key)
        self.resolver.set_canary(model_type, Canary(version, percent))
        detail = f"canary {version} loaded beside {served}: {percent:g}% of requests naming no version"
        return self._outcome(source, Applied(model_type, Outcome.OK, version, served, detail))

    def clear_canary(self, model_type: str, *, source: str = "cluster") -> Applied:
        """End the canary of `model_type` (100% to the default); drop its model unless it serves."""
        old = self.resolver.clear_canary(model_type)
        served = self.resolver.served(model_type)
        if old is not None and old != served and old != self.resolver.pin(model_type):
            self.cache.evict((model_type, old))
        detail = f"canary {old} ended; 100% to {served}" if old else "no canary ran on this node"
        return self._outcome(source, Applied(model_type, Outcome.OK, served, served, detail))

    def canaries(self) -> dict[str, Canary]:
        return self.resolver.canaries()

    def _refresh_exact(self, model_type: str, version: str, source: str) -> Applied:
        """Load `version` afresh beside any cached copy and swap it in; the default is unchanged."""
        previous = self.resolver.served(model_type)
        key = (model_type, version)
        try:
            model, cost = self.loads.bounded(key, lambda: self.loads.load(key, replacing=(key,)))
        except (ModelLoadError, ModelNotFound) as exc:
            self.cache.release(key)
            return self._outcome(source, Applied(model_type, Outcome.FAILED, previous, previous, str(exc)))
        self.cache.replace(key, model, cost)
        self.resolver.clear_failed(key)
        return self._outcome(
            source, Applied(model_type, Outcome.OK, previous, previous, f"{version} loaded and swapped in")
        )

    def _outcome(self, source: str, outcome: Applied) -> Applied:
        self.metrics.reloads.labels(source, outcome.outcome.value).inc()
        if outcome.ok:
            log.info("%s %s: %s", source, outcome.model_type, outcome.detail)
        else:
            log.error("%s %s failed: %s", source, outcome.model_type, outcome.detail)
        return outcome
