"""The model cache: an LRU bounded by count and bytes, with single-flight loads.

`LRU` is a plain data structure: no locks, no I/O. `ModelCache` adds the one
lock (held only for dictionary operations) and per-key single-flight, so a
hit never waits on a load (invariant 1) and N concurrent misses for one key
cause exactly one load. The caller supplies the load function and, optionally,
where to run it (`submit`, e.g. a bounded load pool) and how long a caller
waits for it (`timeout`); the cache never performs I/O itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Evicted = list[tuple[Any, Any]]


class LRU(Generic[K, V]):
    """Least-recently-used mapping bounded by entry count and, optionally, total cost."""

    def __init__(self, max_items: int, max_cost: int | None = None) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items, self.max_cost = max_items, max_cost
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.total_cost = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """Keys from least to most recently used."""
        return iter(self._data)

    def get(self, key: K) -> V | None:
        """The value for `key`, marking it most recently used."""
        item = self._data.get(key)
        if item is None:
            return None
        self._data.move_to_end(key)
        return item[0]

    def peek(self, key: K) -> V | None:
        item = self._data.get(key)
        return None if item is None else item[0]

    def cost(self, key: K) -> int:
        return self._data[key][1]

    def put(self, key: K, value: V, cost: int = 0) -> list[tuple[K, V]]:
        """Insert or replace `key`; return what had to be evicted to make room."""
        self.pop(key)
        self._data[key] = (value, cost)
        self.total_cost += cost
        evicted = []
        # The newest entry always stays: a model larger than the byte budget is
        # still served, alone, rather than refused.
        while len(self._data) > 1 and self._over_budget():
            evicted.append(self.popitem())
        return evicted

    def pop(self, key: K) -> V | None:
        item = self._data.pop(key, None)
        if item is None:
            return None
        self.total_cost -= item[1]
        return item[0]

    def popitem(self) -> tuple[K, V]:
        """Remove and return the least recently used entry."""
        key, (value, cost) = self._data.popitem(last=False)
        self.total_cost -= cost
        return key, value

    def _over_budget(self) -> bool:
        if len(self._data) > self.max_items:
            return True
        return self.max_cost is not None and self.total_cost > self.max_cost


@dataclass
class EntryStats:
    hits: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CacheStats:
    capacity: int
    max_bytes: int | None
    size: int
    bytes: int
    hits: int
    misses: int
    evictions: int
    loads: int
    entries: list[dict[str, Any]]

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class ModelCache(Generic[K, V]):
    """Thread-safe LRU of loaded models with single-flight loading."""

    def __init__(
        self,
        max_models: int,
        max_bytes: int | None = None,
        on_evict: Callable[[K, V], None] | None = None,
        submit: Callable[[K, Callable[[], None]], object] | None = None,
    ) -> None:
        self._lru: LRU[K, V] = LRU(max_models, max_bytes)
        self._submit = submit
        self._lock = threading.Lock()
        self._pending: dict[K, Future[V]] = {}
        self._entry_stats: dict[K, EntryStats] = {}
        self._on_evict = on_evict
        self.hits = self.misses = self.evictions = self.loads = 0

    @property
    def capacity(self) -> int:
        return self._lru.max_items

    @property
    def max_bytes(self) -> int | None:
        return self._lru.max_cost

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._lru

    def cached_keys(self) -> list[K]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._lru)

    @property
    def total_bytes(self) -> int:
        return self._lru.total_cost

    def peek(self, key: K) -> V | None:
        """The cached value without counting a lookup or touching recency."""
        with self._lock:
            return self._lru.peek(key)

    def loading(self, key: K) -> bool:
        """Whether a load of `key` is in flight (a caller now would join it)."""
        with self._lock:
            return key in self._pending

    # -- lookups -----------------------------------------------------------
    def get_or_load(
        self, key: K, load: Callable[[], tuple[V, int]], timeout: float | None = None
    ) -> tuple[V, bool]:
        """Return (value, hit). On a miss the first caller starts `load`; all wait up to `timeout`.

        A TimeoutError leaves the load running: its result is cached when it lands.
        """
        value, future, leader = self._lookup(key)
        if future is None:
            return value, True  # type: ignore[return-value]
        if leader:
            if self._submit is None:
                self._run_load(key, future, load)
            else:
                self._submit(key, lambda: self._run_load(key, future, load))
        return future.result(timeout), False

    async def aget_or_load(
        self, key: K, load: Callable[[], tuple[V, int]], timeout: float | None = None
    ) -> tuple[V, bool]:
        """Like `get_or_load`, but the waiting is awaited (a miss never blocks the event loop)."""
        value, future, leader = self._lookup(key)
        if future is None:
            return value, True  # type: ignore[return-value]
        if leader:
            if self._submit is None:
                loop = asyncio.get_running_loop()
                loop.run_in_executor(None, self._run_load, key, future, load)
            else:
                self._submit(key, lambda: self._run_load(key, future, load))
        # wait_for cancels only the asyncio wrapper: the shared future is already
        # running (see _lookup), so other waiters and the load are unaffected.
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout), False

    def _lookup(self, key: K) -> tuple[V | None, Future[V] | None, bool]:
        with self._lock:
            value = self._lru.get(key)
            if value is not None:
                self.hits += 1
                stats = self._entry_stats[key]
                stats.hits += 1
                stats.last_used = time.time()
                return value, None, False
            self.misses += 1
            future = self._pending.get(key)
            if future is not None:
                return None, future, False
            future = self._pending[key] = Future()
            future.set_running_or_notify_cancel()  # so a waiter's timeout cannot cancel it for all
            return None, future, True

    def _run_load(self, key: K, future: Future[V], load: Callable[[], tuple[V, int]]) -> None:
        try:
            value, cost = load()
        except BaseException as exc:
            # A failed load is not cached: every waiter gets the error, the next caller retries.
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._pending.pop(key, None)
            self.loads += 1
            evicted = self._insert(key, value, cost)
        future.set_result(value)
        self._notify(evicted)

    # -- direct changes (reload, pin, unload) ------------------------------
    def replace(self, key: K, value: V, cost: int, remove: tuple[K, ...] = ()) -> None:
        """Atomically insert `key` (a freshly loaded model) and drop `remove`.

        Requests see either the old entries or the new one, never neither.
        """
        with self._lock:
            self.loads += 1
            for old in remove:
                if old != key:
                    self._lru.pop(old)
                    self._entry_stats.pop(old, None)
            evicted = self._insert(key, value, cost)
        self._notify(evicted)

    def evict(self, key: K) -> bool:
        """Drop `key` on request (unload); not counted as an eviction."""
        with self._lock:
            self._entry_stats.pop(key, None)
            return self._lru.pop(key) is not None

    def _insert(self, key: K, value: V, cost: int) -> list[tuple[K, V]]:
        evicted = self._lru.put(key, value, cost)
        self._entry_stats[key] = EntryStats()
        for old, _ in evicted:
            self._entry_stats.pop(old, None)
        self.evictions += len(evicted)
        return evicted

    def _notify(self, evicted: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in evicted:
                self._on_evict(key, value)

    def stats(self) -> CacheStats:
        with self._lock:
            entries = [
                {
                    "key": key,
                    "size_bytes": self._lru.cost(key),
                    "hits": self._entry_stats[key].hits,
                    "loaded_at": self._entry_stats[key].loaded_at,
                    "last_used": self._entry_stats[key].last_used,
                }
                for key in reversed(list(self._lru))
            ]
            return CacheStats(
                capacity=self._lru.max_items,
                max_bytes=self._lru.max_cost,
                size=len(self._lru),
                bytes=self._lru.total_cost,
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                loads=self.loads,
                entries=entries,
            )
