"""Eviction policies: plain bounded mappings, like cachetools' cache classes.

`base.Cache` holds the bookkeeping every policy shares (count and byte bounds,
idle expiry, eviction reasons); each policy decides only which entry goes:

- `lru`: least recently used (`classic.LRUCache`);
- `lfu`: least frequently used, with aging (`classic.LFUCache`);
- `arc`: adaptive replacement, scan-resistant (`arc.ARCCache`);
- `cost`: GreedyDual-Size-Frequency, weighing frequency, measured load time and
  resident bytes, so a slow model is not evicted for a cheap one (`cost.CostAwareCache`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node.policies.arc import ARCCache
from node.policies.base import Cache, Evicted, K, Reason, V
from node.policies.classic import LFUCache, LRUCache
from node.policies.cost import CostAwareCache

__all__ = [
    "POLICIES",
    "ARCCache",
    "Cache",
    "CostAwareCache",
    "Evicted",
    "LFUCache",
    "LRUCache",
    "Reason",
    "make_policy",
    "policy_name",
]

POLICIES: dict[str, type[Cache]] = {  # type: ignore[type-arg]
    "lru": LRUCache,
    "lfu": LFUCache,
    "arc": ARCCache,
    "cost": CostAwareCache,
}


def make_policy(
    name: str,
    max_items: int,
    max_cost: int | None = None,
    idle_ttl: float | None = None,
    timer: Callable[[], float] = time.monotonic,
) -> Cache[K, V]:
    """The policy called `name` (one of `POLICIES`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(max_items, max_cost, idle_ttl, timer)


def policy_name(cache: Cache) -> str | None:  # type: ignore[type-arg]
    """The registered name of `cache`'s policy, or None for a class not in `POLICIES`."""
    return next((name for name, cls in POLICIES.items() if type(cache) is cls), None)
