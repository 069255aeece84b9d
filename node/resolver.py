"""Which version serves a request: pins, canaries, the memoised default, failure TTL, fallback order.

No loading here: the service asks the resolver what to try and in which order,
then loads through the cache. The served ("default") version of each model
type is memoised, so the request path does no registry I/O on a hit, and it
changes only when the service has loaded the new version beside the old one
(invariant 2) and calls `set_default`. A canary is active here only after the
service loaded its version beside the default (`set_canary`); `canary_pick`
then sends its share of the requests that name no version to it.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping

from coordinator.errors import RegistryError
from coordinator.registry import Registry
from coordinator.versions import is_prerelease, normalize_version, parse_version, validate_model_type
from coordinator.wire import Canary
from node.errors import ModelLoadError
from node.metrics import NodeMetrics

Key = tuple[str, str]
MAX_ROUTING_KEY = 256
"""Characters of a routing key (body `routing_key` or `X-Modelcache-Routing-Key`)."""


def routing_bucket(model_type: str, routing_key: str) -> int:
    """0..9999, the same on every node and every run for one (model type, key).

    A stable hash, never Python's salted `hash()`: one user must see one version on every node.
    """
    digest = hashlib.blake2b(f"{model_type}\0{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


def in_canary(model_type: str, percent: float, routing_key: str | None, draw: Callable[[], float]) -> bool:
    """Whether one request goes to the canary: by its key's bucket, else by a per-node random draw."""
    if routing_key is None:
        return draw() * 100 < percent
    return routing_bucket(model_type, routing_key) < round(percent * 100)


class Resolver:
    """Pins, defaults and recent load failures of one node."""

    def __init__(
        self,
        registry: Registry,
        metrics: NodeMetrics,
        *,
        pins: Mapping[str, str] | None = None,
        failure_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.registry, self.metrics = registry, metrics
        self._draw = draw or random.Random().random  # its own generator (see node.background.Backoff)
        self._canaries: dict[str, Canary] = {}
        self.failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pins: dict[str, str] = {k: normalize_version(v) for k, v in (pins or {}).items()}
        self._default: dict[str, str] = {}
        self._failed: dict[Key, tuple[float, str]] = {}
        self._known_types: set[str] = set()

    # -- pins ----------------------------------------------------------------
    @property
    def pins(self) -> dict[str, str]:
        return dict(self._pins)

    def pin(self, model_type: str) -> str | None:
        return self._pins.get(model_type)

    def set_pin(self, model_type: str, version: str | None) -> bool:
        """Pin `model_type` to `version` (None: unpin); return whether the pin changed."""
        new = normalize_version(version) if version is not None else None
        old = self._pins.get(model_type)
        if new == old:
            return False
        pins = dict(self._pins)  # copy, then swap: readers on other threads see one or the other
        if new is None:
            del pins[model_type]
        else:
            pins[model_type] = new
        self._pins = pins
        if old is not None:
            self.metrics.pinned_version.remove(model_type, old)
        if new is not None:
            self.metrics.pinned_version.labels(model_type, new).set(1)
        return True

    # -- canaries ------------------------------------------------------------
    def canaries(self) -> dict[str, Canary]:
        """Active canaries on this node, by model type."""
        return dict(self._canaries)

    def set_canary(self, model_type: str, canary: Canary) -> None:
        """Activate (call only once its version is loaded: no request may wait on its load)."""
        old = self._canaries.get(model_type)
        self._canaries[model_type] = canary
        if old is not None and old.version != canary.version:
            self.metrics.canary_percent.remove(model_type, old.version)
        self.metrics.canary_percent.labels(model_type, canary.version).set(canary.percent)

    def clear_canary(self, model_type: str) -> str | None:
        """Deactivate; return the version that was the canary, if any."""
        old = self._canaries.pop(model_type, None)
        if old is None:
            return None
        self.metrics.canary_percent.remove(model_type, old.version)
        return old.version

    def canary_pick(self, model_type: str, routing_key: str | None) -> str | None:
        """The canary version when this request falls in its share, else None (serve the default)."""
        canary = self._canaries.get(model_type)
        if canary is None or canary.percent <= 0:
            return None
        if self.recently_failed((model_type, canary.version)):
            return None
        return canary.version if in_canary(model_type, canary.percent, routing_key, self._draw) else None

    # -- defaults ----------------------------------------------------------
    def target(self, model_type: str) -> str:
        """What the default should be now: the pin, else the latest stable version (registry I/O).

        Reloads and pin changes come through here, so a cached listing (object store) is re-read.
        """
        pinned = self._pins.get(model_type)
        if pinned:
            return pinned
        self.registry.refresh(model_type)
        return self.registry.latest(model_type)

    def default_version(self, model_type: str) -> str:
        """The version served when a request names none: pin, else latest stable (memoised)."""
        version = self._default.get(model_type)
        if version is None:
            validate_model_type(model_type)
            version = self.target(model_type)
            self.set_default(model_type, version)
        return version

    def served(self, model_type: str) -> str | None:
        """The memoised default, if this node has resolved one."""
        return self._default.get(model_type)

    def serving(self) -> dict[str, str]:
        return dict(self._default)

    def set_default(self, model_type: str, version: str) -> None:
        with self._lock:
            old = self._default.get(model_type)
            self._default[model_type] = version
            self._known_types.add(model_type)
        if old != version:
            if old is not None:
                self.metrics.served_version.remove(model_type, old)
            self.metrics.served_version.labels(model_type, version).set(1)

    def is_default_or_pinned(self, key: Key) -> bool:
        return key[1] == self.default_version(key[0]) or key[1] == self._pins.get(key[0])

    def check_known(self, model_type: str) -> None:
        """Raise unless `model_type` exists: unknown types must not reach the cache or metric labels."""
        if model_type not in self._known_types:
            self.registry.versions(validate_model_type(model_type))
            self._known_types.add(model_type)

    # -- failures and fallback -------------------------------------------------
    def recently_failed(self, key: Key) -> bool:
        failed = self._failed.get(key)
        return failed is not None and failed[0] > self._clock()

    def mark_failed(self, key: Key, detail: str) -> None:
        """Skip `key` in favour of its fallback for the failure TTL."""
        self._failed[key] = (self._clock() + self.failure_ttl_s, detail)

    def clear_failed(self, key: Key) -> None:
        self._failed.pop(key, None)

    def failure(self, key: Key) -> str:
        return self._failed.get(key, (0.0, "load failed"))[1]

    def fallback_candidates(self, model_type: str, failed: str) -> list[str]:
        """Stable versions below `failed`, highest first, not recently failed themselves."""
        ceiling = parse_version(failed)
        try:
            versions = self.registry.versions(model_type)
        except RegistryError as exc:
            reason = self.failure((model_type, failed))
            raise ModelLoadError(model_type, failed, f"{reason}; {exc}", reason="io") from None
        below = [v for v in reversed(versions) if parse_version(v) < ceiling and not is_prerelease(v)]
        return [v for v in below if not self.recently_failed((model_type, v))]
