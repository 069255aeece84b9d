"""ARC, the Adaptive Replacement Cache (Megiddo and Modha, FAST 2003), over the shared bookkeeping.

ARC keeps two resident lists: `T1` holds entries seen once recently, `T2`
entries seen at least twice. Each has a ghost list of keys it evicted lately
(`B1`, `B2`; keys only, no models). A miss on a key in `B1` means T1 was too
small, so the target size `p` of T1 grows; a miss on a key in `B2` shrinks it.
The victim comes from T1 while T1 is over its target, else from T2. A scan of
one-off models therefore stays in T1 and replaces itself, while the models
used twice or more wait in T2: the scan resistance LRU lacks, without LFU's
slow forgetting.

Fitted to this cache: the count bound `c` is `max_items`; under a byte budget
the same lists rank the victims and the shared loop evicts until the bytes fit.
A load happens between the miss and the insert, so the ghost hit adapts `p` at
the miss and the key moves to T2 when it is inserted. A reload (`like`) puts
the new version where the old one was.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from node.policies.base import Cache, Evicted, K, V


class ARCCache(Cache[K, V]):
    """Adaptive replacement: recency list T1 and frequency list T2, sized by ghost hits."""

    def __init__(
        self,
        max_items: int,
        max_cost: int | None = None,
        idle_ttl: float | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_items, max_cost, idle_ttl, timer)
        self._t1: OrderedDict[K, None] = OrderedDict()  # least recent first
        self._t2: OrderedDict[K, None] = OrderedDict()
        self._b1: OrderedDict[K, None] = OrderedDict()
        self._b2: OrderedDict[K, None] = OrderedDict()
        self.p = 0.0  # target size of T1
        self._incoming: K | None = None  # the key `put` is making room for

    @property
    def lists(self) -> tuple[list[K], list[K], list[K], list[K]]:
        """(T1, T2, B1, B2), each least recent first (for tests and the curious)."""
        return list(self._t1), list(self._t2), list(self._b1), list(self._b2)

    def put(
        self, key: K, value: V, cost: int = 0, like: K | None = None, load_s: float | None = None
    ) -> list[Evicted[K, V]]:
        try:
            return super().put(key, value, cost, like, load_s)
        finally:
            self._incoming = None

    def _order(self) -> list[K]:
        # ARC's REPLACE counts T1 before the newcomer joins it.
        t1 = len(self._t1) - (self._incoming in self._t1)
        if t1 >= 1 and t1 > self.p:
            return [*self._t1, *self._t2]
        return [*self._t2, *self._t1]

    def _on_access(self, key: K, hit: bool) -> None:
        if hit:
            self._t1.pop(key, None)
            self._t2.pop(key, None)
            self._t2[key] = None
            return
        c = self.max_items
        if key in self._b1:
            self.p = min(float(c), self.p + max(len(self._b2) / len(self._b1), 1.0))
        elif key in self._b2:
            self.p = max(0.0, self.p - max(len(self._b1) / len(self._b2), 1.0))

    def _on_insert(self, key: K, like: K | None, load_s: float | None) -> None:
        self._incoming = key
        seen_twice = key in self._b1 or key in self._b2 or (like is not None and like in self._b2)
        for ghosts in (self._b1, self._b2):
            ghosts.pop(key, None)
            if like is not None:
                ghosts.pop(like, None)
        (self._t2 if seen_twice else self._t1)[key] = None
        self._trim_ghosts()

    def _on_seed(self, key: K, uses: int) -> None:
        if uses >= 2:  # seen twice or more: it goes to T2, as a hit on a ghost of B2 would put it
            self._b2[key] = None

    def _on_arrange(self, keys: list[K]) -> None:
        for key in keys:
            (self._t2 if key in self._t2 else self._t1).move_to_end(key)

    def _on_remove(self, key: K) -> None:
        # Evicted, expired or replaced: the key is remembered as a ghost of its list.
        if key in self._t1:
            del self._t1[key]
            self._b1[key] = None
        elif key in self._t2:
            del self._t2[key]
            self._b2[key] = None
        self._trim_ghosts()

    def _trim_ghosts(self) -> None:
        c = self.max_items
        while self._b1 and len(self._t1) + len(self._b1) > c:
            self._b1.popitem(last=False)
        while self._b2 and len(self._t1) + len(self._t2) + len(self._b1) + len(self._b2) > 2 * c:
            self._b2.popitem(last=False)
