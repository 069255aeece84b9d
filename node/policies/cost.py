"""The cost-aware policy: GreedyDual-Size-Frequency (Cherkasova 1998), with aging.

A miss on a model costs its load time, which differs by 100-1,000x between
models, and a model occupies its share of the cache. Each resident entry has
a priority

    H = L + frequency * load_seconds / share

and the lowest priority goes first. `share` is the fraction of the binding
budget the entry takes: one slot of `max_items`, or its resident bytes over
`max_cost` when that is larger. `L` (the inflation) is set to the priority of
every victim, so entries that stop being used fall behind the newcomers
priced on top of it: the aging of GreedyDual, which LFU gets from halving.
Frequencies also halve every `age_every` accesses (as in `LFUCache`), and are
kept for keys that are not resident, so a model that returns is judged by its
record. A model slow to load is therefore not thrown out for a cheap one
unless the cheap one is used correspondingly more often.

The load time is measured by the caller (`put(load_s=...)`, `update`); a
reload (`like`) inherits the old version's, and a key never measured is
priced at the mean of those that were.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node.policies.base import Cache, Evicted, K, V

MIN_LOAD_S = 1e-4  # a load measured as zero would price the model at L: never free


class CostAwareCache(Cache[K, V]):
    """Lowest `L + frequency * load_seconds / share` goes first (GreedyDual-Size-Frequency)."""

    def __init__(
        self,
        max_items: int,
        max_cost: int | None = None,
        idle_ttl: float | None = None,
        timer: Callable[[], float] = time.monotonic,
        age_every: int | None = None,
    ) -> None:
        super().__init__(max_items, max_cost, idle_ttl, timer)
        self.age_every = age_every or 10 * max_items
        self.inflation = 0.0
        self._freq: dict[K, int] = {}
        self._load_s: dict[K, float] = {}
        self._priority: dict[K, float] = {}
        self._accesses = 0

    def priority(self, key: K) -> float:
        return self._priority[key]

    def load_seconds(self, key: K) -> float:
        """The load time this policy charges for `key` (measured, inherited or the mean)."""
        known = self._load_s.get(key)
        if known is not None:
            return known
        resident = [self._load_s[k] for k in self._data if k in self._load_s]
        return sum(resident) / len(resident) if resident else 1.0

    def put(
        self, key: K, value: V, cost: int = 0, like: K | None = None, load_s: float | None = None
    ) -> list[Evicted[K, V]]:
        evicted = super().put(key, value, cost, like, load_s)
        if evicted:
            # GreedyDual prices a newcomer on the L its victims set (evict, then insert).
            self._reprice(key)
        return evicted

    def _share(self, key: K) -> float:
        share = 1.0 / self.max_items
        if self.max_cost:
            share = max(share, self._data[key][1] / self.max_cost)
        return share

    def _reprice(self, key: K) -> None:
        value = self._freq.get(key, 1) * self.load_seconds(key) / self._share(key)
        self._priority[key] = self.inflation + value

    def _order(self) -> list[K]:
        return sorted(self._data, key=lambda k: (self._priority[k], self._used[k]))

    def _on_access(self, key: K, hit: bool) -> None:
        self._freq[key] = self._freq.get(key, 0) + 1
        self._accesses += 1
        if self._accesses >= self.age_every:
            self._accesses = 0
            self._freq = {k: n // 2 for k, n in self._freq.items() if n // 2 or k in self._data}
            self._load_s = {k: s for k, s in self._load_s.items() if k in self._freq or k in self._data}
        if hit:
            self._reprice(key)

    def _on_insert(self, key: K, like: K | None, load_s: float | None) -> None:
        if load_s is not None:
            self._load_s[key] = max(load_s, MIN_LOAD_S)
        elif like is not None and like in self._load_s:
            self._load_s[key] = self._load_s[like]
        inherited = self._freq.get(like, 0) if like is not None else 0
        self._freq[key] = max(self._freq.get(key, 0), inherited, 1)
        self._reprice(key)

    def _on_seed(self, key: K, uses: int) -> None:
        self._freq[key] = max(self._freq.get(key, 0), uses)

    def _on_update(self, key: K, load_s: float | None) -> None:
        if load_s is not None:
            self._load_s[key] = max(load_s, MIN_LOAD_S)
        self._reprice(key)

    def _on_evict(self, key: K) -> None:
        self.inflation = max(self.inflation, self._priority[key])

    def _on_remove(self, key: K) -> None:
        self._priority.pop(key, None)
