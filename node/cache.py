"""The model cache: a pluggable eviction policy, with single-flight loads.

The policy (`node.policies`: LRU, LFU, ARC or cost-aware, bounded by count,
resident bytes and idle time) is a plain data structure: no locks, no I/O. `ModelCache` adds the
one lock (held only for dictionary operations) and per-key single-flight, so
a hit never waits on a load (invariant 1) and N concurrent misses for one key
cause exactly one load. A load reserves its expected cost first (`reserve`),
so room is made *before* the new model is in memory, counting other loads in
flight; idle entries are dropped on access and by `expire()` (the service
calls it periodically). The caller supplies the load function and, optionally,
where to run it (`submit`, e.g. a bounded load pool) and how long a caller
waits for it (`timeout`); the cache never performs I/O itself. The cache
times each load (the cost policy weighs it) and feeds every lookup to a
hit-ratio curve (`node.curve`: ghost caches at 2x and 4x the capacity).
Each entry counts its uses (the load and every hit, carried over a reload), so a
warm restart (`node.restore`) can save them and `prefetch` can seed the policy
with them: a restored model is ranked by its record, not as a newcomer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from dataclasses import replace as copy_with
from typing import Any, Generic, TypeVar

from node.curve import CurvePoint, HitRatioCurve
from node.policies import Cache, Evicted, Reason, make_policy, policy_name

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class EntryStats:
    hits: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    uses: int = 1
    """The load and every hit since, inherited by a reload and restored by a warm restart."""


@dataclass(frozen=True)
class CacheStats:
    capacity: int
    max_bytes: int | None
    policy: str
    idle_ttl_s: float | None
    size: int
    bytes: int
    hits: int
    misses: int
    evictions: int
    evictions_by_reason: dict[str, int]
    loads: int
    entries: list[dict[str, Any]]
    hit_ratio_curve: list[CurvePoint] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class ModelCache(Generic[K, V]):
    """Thread-safe cache of loaded models over an eviction policy, with single-flight loading."""

    def __init__(
        self,
        max_models: int,
        max_bytes: int | None = None,
        on_evict: Callable[[K, V, Reason], None] | None = None,
        submit: Callable[[K, Callable[[], None]], object] | None = None,
        *,
        policy: str | Cache[K, V] = "lru",
        idle_ttl_s: float | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(policy, str):
            self.policy_name = policy
            self._cache: Cache[K, V] = make_policy(policy, max_models, max_bytes, idle_ttl_s, timer)
        else:
            self.policy_name = type(policy).__name__
            self._cache = policy
        self._lock = threading.Lock()
        self.curve: HitRatioCurve[K] = HitRatioCurve(
            policy_name(self._cache) or "lru", self._cache.max_items, self._cache.max_cost, guard=self._lock
        )
        self._submit = submit
        self._pending: dict[K, Future[V]] = {}
        self._reserved: dict[K, int] = {}
        self._reserved_at: dict[K, float] = {}  # when a reload's load began, to time it
        self._entry_stats: dict[K, EntryStats] = {}
        self._on_evict = on_evict
        self._by_reason: Counter[str] = Counter()
        self.hits = self.misses = self.evictions = self.loads = 0

    @property
    def capacity(self) -> int:
        return self._cache.max_items

    @property
    def max_bytes(self) -> int | None:
        return self._cache.max_cost

    @property
    def idle_ttl_s(self) -> float | None:
        return self._cache.idle_ttl

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._cache

    def cached_keys(self) -> list[K]:
        """Cached keys, the next eviction candidate first."""
        with self._lock:
            return list(self._cache)

    @property
    def total_bytes(self) -> int:
        return self._cache.total_cost

    def peek(self, key: K) -> V | None:
        """The cached value without counting a lookup or touching recency."""
        with self._lock:
            return self._cache.peek(key)

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
            expired = self._cache.expire()  # O(1) unless something is due
            self._forget(expired)
            self.curve.record(key)
            value = self._cache.get(key)
            if value is not None:
                self.hits += 1
                stats = self._entry_stats[key]
                stats.hits += 1
                stats.uses += 1
                stats.last_used = time.time()
                result: tuple[V | None, Future[V] | None, bool] = (value, None, False)
            else:
                self.misses += 1
                future = self._pending.get(key)
                if future is None:
                    future = self._pending[key] = Future()
                    future.set_running_or_notify_cancel()  # so a waiter's timeout cannot cancel it for all
                    result = (None, future, True)
                else:
                    result = (None, future, False)
        self._notify(expired)
        if self.curve.due():
            self.curve.drain()  # outside the lock: no hit waits on the ghost caches
        return result

    def _run_load(
        self, key: K, future: Future[V], load: Callable[[], tuple[V, int]], uses: int | None = None
    ) -> None:
        started = time.perf_counter()
        try:
            value, cost = load()
        except BaseException as exc:
            # A failed load is not cached: every waiter gets the error, the next caller retries.
            with self._lock:
                self._pending.pop(key, None)
                self._reserved.pop(key, None)
                self._reserved_at.pop(key, None)
            future.set_exception(exc)
            return
        load_s = time.perf_counter() - started
        with self._lock:
            self._pending.pop(key, None)
            self._reserved.pop(key, None)
            self._reserved_at.pop(key, None)
            self.loads += 1
            evicted = self._insert(key, value, cost, load_s=load_s, uses=uses)
        future.set_result(value)
        self._notify(evicted)

    def reserve(self, key: K, cost: int, protect: Collection[K] = (), slots: int = 1) -> None:
        """Make room for `key` (about to be loaded, costing about `cost`) before it is in memory.

        Other loads' reservations count too, so concurrent loads do not each make
        room only for themselves. Never evicts `protect` (the version a reload
        replaces keeps serving until the swap). The reservation ends when `key`
        is inserted or its load fails (`release`).
        """
        with self._lock:
            others = [c for k, c in self._reserved.items() if k != key]
            evicted = self._cache.make_room(cost + sum(others), slots + len(others), protect)
            self._forget(evicted)
            self._reserved[key] = cost
            self._reserved_at.setdefault(key, time.perf_counter())
        self._notify(evicted)

    def release(self, key: K) -> None:
        """End the reservation of `key` without inserting it (e.g. a failed reload)."""
        with self._lock:
            self._reserved.pop(key, None)
            self._reserved_at.pop(key, None)

    def prefetch(self, key: K, load: Callable[[], tuple[V, int]], uses: int = 1) -> Future[V]:
        """Start loading `key` without a lookup (a warm restart); the future ends with the load.

        Counts no hit or miss and feeds no curve: no request asked. Joins a load of `key` in
        flight; a cached `key` is done at once. The new entry starts with `uses` (its record
        before the restart), and the policy ranks it by that record (`Cache.seed`).
        """
        with self._lock:
            value = self._cache.peek(key)
            pending = self._pending.get(key)
            if value is None and pending is None:
                future: Future[V] = Future()
                future.set_running_or_notify_cancel()
                self._pending[key] = future
        if value is not None:
            done: Future[V] = Future()
            done.set_result(value)
            return done
        if pending is not None:
            return pending
        if self._submit is None:
            self._run_load(key, future, load, uses)
        else:
            self._submit(key, lambda: self._run_load(key, future, load, uses))
        return future

    def arrange(self, keys: list[K]) -> None:
        """Cached `keys` were last used in this order before a restart (least recent first)."""
        with self._lock:
            self._cache.arrange([k for k in keys if k in self._cache])

    # -- direct changes (reload, pin, unload) ------------------------------
    def replace(self, key: K, value: V, cost: int, remove: tuple[K, ...] = ()) -> None:
        """Atomically insert `key` (a freshly loaded model) and drop `remove`.

        Requests see either the old entries or the new one, never neither. The
        new entry inherits the usage history of the first of `remove`. Its load
        time is measured from its reservation (`reserve`, at the start of its
        load), else inherited.
        """
        with self._lock:
            self.loads += 1
            self._reserved.pop(key, None)
            reserved_at = self._reserved_at.pop(key, None)
            load_s = None if reserved_at is None else time.perf_counter() - reserved_at
            like = next((old for old in remove if old != key), None)
            inherited = self._entry_stats.get(key if like is None else like)  # a reload keeps the record
            if like is not None:
                self.curve.replaced(like, key)
            for old in remove:
                if old != key:
                    self._cache.pop(old)  # the policy keeps its usage history for `like`
                    self._entry_stats.pop(old, None)
            evicted = self._insert(key, value, cost, like, load_s)
            if inherited is not None:
                self._entry_stats[key].uses = inherited.uses
        self._notify(evicted)

    def evict(self, key: K) -> bool:
        """Drop `key` on request (unload): reported with reason `unload`."""
        with self._lock:
            value = self._cache.pop(key)
            if value is None:
                return False
            self._entry_stats.pop(key, None)
            self._by_reason[Reason.UNLOAD.value] += 1
        self._notify([Evicted(key, value, Reason.UNLOAD)])
        return True

    def expire(self) -> list[K]:
        """Drop entries idle longer than the TTL now (the periodic sweep); return their keys."""
        with self._lock:
            expired = self._cache.expire()
            self._forget(expired)
        self._notify(expired)
        return [e.key for e in expired]

    def _insert(
        self,
        key: K,
        value: V,
        cost: int,
        like: K | None = None,
        load_s: float | None = None,
        uses: int | None = None,
    ) -> list[Evicted[K, V]]:
        if uses is not None:
            self._cache.seed(key, uses)
        evicted = self._cache.put(key, value, cost, like, load_s)
        self.curve.learn(key, cost, load_s)
        self._entry_stats[key] = EntryStats(uses=max(1, uses or 1))
        self._forget(evicted)
        return evicted

    def _forget(self, evicted: list[Evicted[K, V]]) -> None:
        for e in evicted:
            self._entry_stats.pop(e.key, None)
            self._by_reason[e.reason.value] += 1
        self.evictions += len(evicted)

    def _notify(self, evicted: list[Evicted[K, V]]) -> None:
        if self._on_evict is not None:
            for e in evicted:
                self._on_evict(e.key, e.value, e.reason)

    def _stats(self) -> CacheStats:
        with self._lock:
            entries = [
                {
                    "key": key,
                    "value": self._cache.peek(key),
                    "resident_bytes": self._cache.cost(key),
                    "hits": self._entry_stats[key].hits,
                    "uses": self._entry_stats[key].uses,
                    "loaded_at": self._entry_stats[key].loaded_at,
                    "last_used": self._entry_stats[key].last_used,
                }
                for key in reversed(list(self._cache))
            ]
            return CacheStats(
                capacity=self._cache.max_items,
                max_bytes=self._cache.max_cost,
                policy=self.policy_name,
                idle_ttl_s=self._cache.idle_ttl,
                size=len(self._cache),
                bytes=self._cache.total_cost,
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                evictions_by_reason=dict(self._by_reason),
                loads=self.loads,
                entries=entries,
            )

    def stats(self) -> CacheStats:
        """Counters, entries and the hit-ratio curve (read outside the lock: the curve has its own)."""
        return copy_with(self._stats(), hit_ratio_curve=self.curve.points())

    def hit_ratio_estimates(self) -> dict[int, float]:
        """The curve's estimated hit ratio by capacity factor (1, 2, 4): the gauge's values."""
        return {p.factor: p.hit_ratio for p in self.curve.points()}
