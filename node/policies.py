"""Eviction policies: plain bounded mappings, like cachetools' cache classes.

No I/O, no logging, no locks: the concurrent layer (`node.cache.ModelCache`)
wraps one of these under its lock. Every policy is bounded by an entry count
and, optionally, a total cost (resident bytes), and can drop entries unused
for `idle_ttl` seconds of its injected `timer` (cachetools' `TTLCache(timer=)`).
A policy decides only *which* entry goes (`_victim`); the bookkeeping of
costs, idleness and eviction reasons is shared, so one contract test mixin
runs against every policy (tests/node/test_cache.py).

- `LRUCache`: least recently used goes first.
- `LFUCache`: least frequently used goes first, with aging (TinyLFU's reset:
  every `age_every` accesses all counts halve), so a once-hot model does not
  stay forever. Counts are kept for keys that are not resident too (TinyLFU's
  history), so a model that keeps coming back is judged by its whole record,
  not as a newcomer. TinyLFU's *admission* filter (refuse to cache a newcomer
  less popular than the victim) is deliberately not used: a model cache must
  load the model to serve the request that missed, so refusing admission would
  not save the load, only hold an uncounted model outside the byte budget. A
  newcomer is never its own victim; among the others the least frequent (then
  least recently used) goes, which is what lets a scan of one-off models
  replace each other instead of the hot ones.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterator
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Reason(StrEnum):
    """Why an entry left the cache (the `reason` label of modelcache_cache_evictions_total)."""

    CAPACITY = "capacity"
    BYTES = "bytes"
    IDLE = "idle"
    UNLOAD = "unload"


class Evicted(NamedTuple, Generic[K, V]):
    key: K
    value: V
    reason: Reason


class Cache(Generic[K, V]):
    """A mapping bounded by entry count, optionally total cost and idle time; subclasses pick victims."""

    def __init__(
        self,
        max_items: int,
        max_cost: int | None = None,
        idle_ttl: float | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if idle_ttl is not None and idle_ttl <= 0:
            raise ValueError("idle_ttl must be positive")
        self.max_items, self.max_cost, self.idle_ttl = max_items, max_cost, idle_ttl
        self.timer = timer
        self._data: dict[K, tuple[V, int]] = {}
        self._used: dict[K, float] = {}
        self._next_expiry = float("inf")
        self.total_cost = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """Keys, the next victim first."""
        return iter(self._order())

    def get(self, key: K) -> V | None:
        """The value for `key` (None on a miss); counts as a use of `key` either way."""
        item = self._data.get(key)
        self._on_access(key, item is not None)
        if item is None:
            return None
        self._used[key] = self.timer()
        return item[0]

    def peek(self, key: K) -> V | None:
        """The value without counting a use."""
        item = self._data.get(key)
        return None if item is None else item[0]

    def cost(self, key: K) -> int:
        return self._data[key][1]

    def last_used(self, key: K) -> float:
        """When `key` was last inserted or hit, on the cache's timer."""
        return self._used[key]

    def put(self, key: K, value: V, cost: int = 0, like: K | None = None) -> list[Evicted[K, V]]:
        """Insert or replace `key`; return what had to go to make room.

        `like` names an entry whose usage history the new one inherits (a reload
        replacing an old version of the same model). The new entry itself always
        stays: a model larger than the budget is served, alone, rather than refused.
        """
        self.pop(key)
        self._data[key] = (value, cost)
        self.total_cost += cost
        now = self._used[key] = self.timer()
        if self.idle_ttl is not None:
            self._next_expiry = min(self._next_expiry, now + self.idle_ttl)
        self._on_insert(key, like)
        return self._evict_until_fits(0, 0, protect=(key,))

    def make_room(self, cost: int, slots: int = 1, protect: Collection[K] = ()) -> list[Evicted[K, V]]:
        """Evict until `slots` more entries costing `cost` in all would fit (never `protect`)."""
        return self._evict_until_fits(cost, slots, protect)

    def pop(self, key: K) -> V | None:
        """Remove `key` without counting an eviction."""
        item = self._data.pop(key, None)
        if item is None:
            return None
        self.total_cost -= item[1]
        del self._used[key]
        self._on_remove(key)
        return item[0]

    def expire(self) -> list[Evicted[K, V]]:
        """Drop every entry unused for `idle_ttl`; O(1) when nothing can have expired yet."""
        if self.idle_ttl is None:
            return []
        now = self.timer()
        if now < self._next_expiry:
            return []
        cutoff = now - self.idle_ttl
        gone = [key for key, used in self._used.items() if used <= cutoff]
        evicted = [Evicted(key, self._data[key][0], Reason.IDLE) for key in gone]
        for key in gone:
            self.pop(key)
        self._next_expiry = min(self._used.values(), default=float("inf")) + self.idle_ttl
        return evicted

    def _over(self, cost: int, slots: int) -> Reason | None:
        """Which bound `slots` more entries costing `cost` would break (count first), if any."""
        if len(self._data) + slots > self.max_items:
            return Reason.CAPACITY
        if self.max_cost is not None and self.total_cost + cost > self.max_cost:
            return Reason.BYTES
        return None

    def _evict_until_fits(self, cost: int, slots: int, protect: Collection[K]) -> list[Evicted[K, V]]:
        evicted: list[Evicted[K, V]] = []
        while (reason := self._over(cost, slots)) is not None:
            key = next((k for k in self._order() if k not in protect), None)
            if key is None:
                break
            value = self._data[key][0]
            self.pop(key)
            evicted.append(Evicted(key, value, reason))
        return evicted

    # -- what a policy decides ---------------------------------------------
    def _order(self) -> list[K]:
        """Resident keys, the next victim first."""
        raise NotImplementedError

    def _on_access(self, key: K, hit: bool) -> None:
        """A lookup of `key` (hit or miss)."""

    def _on_insert(self, key: K, like: K | None) -> None:
        """`key` was just inserted."""

    def _on_remove(self, key: K) -> None:
        """`key` was just removed."""


class LRUCache(Cache[K, V]):
    """Least recently used goes first."""

    def __init__(
        self,
        max_items: int,
        max_cost: int | None = None,
        idle_ttl: float | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_items, max_cost, idle_ttl, timer)
        self._recency: OrderedDict[K, None] = OrderedDict()

    def _order(self) -> list[K]:
        return list(self._recency)

    def _on_access(self, key: K, hit: bool) -> None:
        if hit:
            self._recency.move_to_end(key)

    def _on_insert(self, key: K, like: K | None) -> None:
        self._recency[key] = None

    def _on_remove(self, key: K) -> None:
        self._recency.pop(key, None)


class LFUCache(Cache[K, V]):
    """Least frequently used goes first; counts halve every `age_every` accesses (aging)."""

    def __init__(
        self,
        max_items: int,
        max_cost: int | None = None,
        idle_ttl: float | None = None,
        timer: Callable[[], float] = time.monotonic,
        age_every: int | None = None,
    ) -> None:
        super().__init__(max_items, max_cost, idle_ttl, timer)
        # TinyLFU samples ~10x the cache size between resets.
        self.age_every = age_every or 10 * max_items
        self._freq: dict[K, int] = {}
        self._accesses = 0

    def frequency(self, key: K) -> int:
        return self._freq.get(key, 0)

    def _order(self) -> list[K]:
        return sorted(self._data, key=lambda k: (self._freq.get(k, 0), self._used[k]))

    def _on_access(self, key: K, hit: bool) -> None:
        self._freq[key] = self._freq.get(key, 0) + 1
        self._accesses += 1
        if self._accesses >= self.age_every:
            self._accesses = 0
            # Halving keeps the ranking but lets new popularity overtake old; dropping
            # zeros keeps the history of non-resident keys bounded.
            self._freq = {k: n // 2 for k, n in self._freq.items() if n // 2 or k in self._data}

    def _on_insert(self, key: K, like: K | None) -> None:
        inherited = self._freq.get(like, 0) if like is not None else 0
        self._freq[key] = max(self._freq.get(key, 0), inherited, 1)


POLICIES: dict[str, type[Cache]] = {"lru": LRUCache, "lfu": LFUCache}  # type: ignore[type-arg]


def make_policy(
    name: str,
    max_items: int,
    max_cost: int | None = None,
    idle_ttl: float | None = None,
    timer: Callable[[], float] = time.monotonic,
) -> Cache[K, V]:
    """The policy called `name` (`lru`, `lfu`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(max_items, max_cost, idle_ttl, timer)
