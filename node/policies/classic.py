"""The classic policies: least recently used, and least frequently used with aging.

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
from collections.abc import Callable

from node.policies.base import Cache, K, V


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

    def _on_insert(self, key: K, like: K | None, load_s: float | None) -> None:
        self._recency[key] = None

    def _on_arrange(self, keys: list[K]) -> None:
        for key in keys:
            self._recency.move_to_end(key)

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

    def _on_seed(self, key: K, uses: int) -> None:
        self._freq[key] = max(self._freq.get(key, 0), uses)

    def _on_insert(self, key: K, like: K | None, load_s: float | None) -> None:
        inherited = self._freq.get(like, 0) if like is not None else 0
        self._freq[key] = max(self._freq.get(key, 0), inherited, 1)
