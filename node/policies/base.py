"""The shared bookkeeping of every eviction policy: a bounded mapping, like cachetools' `Cache`.

No I/O, no logging, no locks: the concurrent layer (`node.cache.ModelCache`)
wraps one of these under its lock. Every policy is bounded by an entry count
and, optionally, a total cost (resident bytes), and can drop entries unused
for `idle_ttl` seconds of its injected `timer` (cachetools' `TTLCache(timer=)`).
A policy decides only *which* entry goes (`_order`, the next victim first);
the bookkeeping of costs, idleness and eviction reasons is here, so one
contract test mixin runs against every policy (tests/node/test_policies.py).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
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


class Cache(ABC, Generic[K, V]):
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

    def put(
        self, key: K, value: V, cost: int = 0, like: K | None = None, load_s: float | None = None
    ) -> list[Evicted[K, V]]:
        """Insert or replace `key`; return what had to go to make room.

        `like` names an entry whose usage history the new one inherits (a reload
        replacing an old version of the same model); `load_s` is how long loading
        it took (the cost policy weighs it; None when unknown). The new entry itself
        always stays: a model larger than the budget is served, alone, rather than refused.
        """
        self.pop(key)
        self._data[key] = (value, cost)
        self.total_cost += cost
        now = self._used[key] = self.timer()
        if self.idle_ttl is not None:
            self._next_expiry = min(self._next_expiry, now + self.idle_ttl)
        self._on_insert(key, like, load_s)
        return self._evict_until_fits(0, 0, protect=(key,))

    def update(self, key: K, cost: int, load_s: float | None = None) -> list[Evicted[K, V]]:
        """Correct a resident entry's cost and load time (learned after it was inserted), in place.

        Unlike `put` it counts no use and keeps the entry's place in the policy.
        """
        value, old = self._data[key]
        self._data[key] = (value, cost)
        self.total_cost += cost - old
        self._on_update(key, load_s)
        return self._evict_until_fits(0, 0, protect=(key,))

    def seed(self, key: K, uses: int) -> None:
        """Before `put`: `key` was used `uses` times before a restart (node.restore), so the
        policy ranks it by that record, not as a newcomer (LRU has no record to keep)."""
        self._on_seed(key, max(1, uses))

    def arrange(self, keys: Collection[K]) -> None:
        """Resident `keys` were last used in this order before a restart, least recent first:
        a recency policy orders them so (counts no use)."""
        self._on_arrange([k for k in keys if k in self._data])

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
            self._on_evict(key)
            self.pop(key)
            evicted.append(Evicted(key, value, reason))
        return evicted

    # -- what a policy decides ---------------------------------------------
    @abstractmethod
    def _order(self) -> list[K]:
        """Resident keys, the next victim first."""

    def _on_access(self, key: K, hit: bool) -> None:
        """A lookup of `key` (hit or miss)."""

    def _on_insert(self, key: K, like: K | None, load_s: float | None) -> None:
        """`key` was just inserted."""

    def _on_seed(self, key: K, uses: int) -> None:
        """`key`, about to be inserted, was used `uses` times before a restart."""

    def _on_arrange(self, keys: list[K]) -> None:
        """Resident `keys`, least recently used first before a restart."""

    def _on_update(self, key: K, load_s: float | None) -> None:
        """`key`'s cost (already changed) or load time was corrected."""

    def _on_evict(self, key: K) -> None:
        """`key` is the policy's victim and is about to be removed (not on `pop` or idle expiry)."""

    def _on_remove(self, key: K) -> None:
        """`key` was just removed (evicted, expired or popped)."""
