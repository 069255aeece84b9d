from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from node.cache import ModelCache
from node.policies import Cache, Evicted, LFUCache, LRUCache, Reason, make_policy


class Clock:
    """An injected timer: tests move time, never sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keys(evicted: list[Evicted]) -> list[object]:
    return [e.key for e in evicted]


class CacheContract:
    """The contract every eviction policy keeps (cachetools-style mixin)."""

    policy: type[Cache]

    def make(self, max_items: int, max_cost: int | None = None, idle_ttl: float | None = None, timer=None):
        return self.policy(max_items, max_cost, idle_ttl, timer or Clock())

    def test_bounded_by_count_with_reason_capacity(self) -> None:
        c = self.make(2)
        c.put("a", 1)
        c.put("b", 2)
        evicted = c.put("c", 3)
        assert len(evicted) == 1 and evicted[0].reason is Reason.CAPACITY
        assert len(c) == 2 and "c" in c

    def test_byte_budget_evicts_until_it_fits_with_reason_bytes(self) -> None:
        c = self.make(10, max_cost=100)
        c.put("a", "A", 40)
        c.put("b", "B", 40)
        evicted = c.put("c", "C", 50)
        assert [e.reason for e in evicted] == [Reason.BYTES] and c.total_cost <= 100
        assert "c" in c

    def test_oversized_entry_is_kept_alone(self) -> None:
        c = self.make(3, max_cost=10)
        c.put("a", "A", 5)
        assert keys(c.put("big", "B", 50)) == ["a"]
        assert list(c) == ["big"] and c.total_cost == 50

    def test_replace_same_key_updates_cost(self) -> None:
        c = self.make(2, max_cost=100)
        c.put("a", "A", 40)
        c.put("a", "A2", 10)
        assert c.total_cost == 10 and c.get("a") == "A2" and len(c) == 1

    def test_peek_and_get(self) -> None:
        c = self.make(2)
        assert c.get("x") is None and c.peek("x") is None
        c.put("a", 1)
        assert c.peek("a") == 1 and c.get("a") == 1

    def test_pop_is_not_an_eviction_and_frees_cost(self) -> None:
        c = self.make(2, max_cost=100)
        c.put("a", "A", 30)
        assert c.pop("a") == "A" and c.pop("a") is None
        assert c.total_cost == 0 and "a" not in c

    def test_make_room_evicts_before_an_insert_but_never_protected(self) -> None:
        c = self.make(3, max_cost=100)
        c.put("old", "O", 40)
        c.put("x", "X", 40)
        evicted = c.make_room(50, protect=("old",))
        assert keys(evicted) == ["x"] and evicted[0].reason is Reason.BYTES
        assert list(c) == ["old"] and c.total_cost == 40
        assert c.make_room(90, protect=("old",)) == []  # does not fit, but protected: kept
        assert "old" in c

    def test_idle_entries_expire_with_reason_idle(self) -> None:
        clock = Clock()
        c = self.make(3, idle_ttl=2.0, timer=clock)
        c.put("a", 1)
        c.put("b", 2)
        clock.now = 1.5
        assert c.get("b") == 2  # a use resets b's idle time
        assert c.expire() == []
        clock.now = 2.5
        expired = c.expire()
        assert keys(expired) == ["a"] and expired[0].reason is Reason.IDLE
        clock.now = 5.0
        assert keys(c.expire()) == ["b"] and len(c) == 0

    def test_no_ttl_never_expires(self) -> None:
        clock = Clock()
        c = self.make(2, timer=clock)
        c.put("a", 1)
        clock.now = 1e9
        assert c.expire() == [] and "a" in c

    def test_rejects_zero_capacity_and_bad_ttl(self) -> None:
        with pytest.raises(ValueError):
            self.make(0)
        with pytest.raises(ValueError):
            self.make(1, idle_ttl=0)


class TestLRUCache(CacheContract):
    policy = LRUCache

    def test_evicts_least_recently_used(self) -> None:
        lru = self.make(2)
        lru.put("a", 1)
        lru.put("b", 2)
        assert lru.get("a") == 1  # a is now most recent
        assert keys(lru.put("c", 3)) == ["b"]
        assert list(lru) == ["a", "c"]

    def test_peek_does_not_touch_recency(self) -> None:
        lru = self.make(2)
        lru.put("a", 1)
        lru.put("b", 2)
        assert lru.peek("a") == 1
        assert keys(lru.put("c", 3)) == ["a"]

    def test_a_scan_flushes_hot_entries(self) -> None:
        """The weakness LFU exists for: four one-off models push out two hot ones."""
        lru = self.make(3)
        for _ in range(30):
            for hot in ("h1", "h2"):
                if lru.get(hot) is None:
                    lru.put(hot, hot)
        for one_off in ("x1", "x2", "x3", "x4"):
            lru.get(one_off)
            lru.put(one_off, one_off)
        assert "h1" not in lru and "h2" not in lru


class TestLFUCache(CacheContract):
    policy = LFUCache

    def test_hot_entries_survive_a_scan_of_one_offs(self) -> None:
        lfu = self.make(3)
        for _ in range(30):
            for hot in ("h1", "h2"):
                if lfu.get(hot) is None:
                    lfu.put(hot, hot)
        for one_off in ("x1", "x2", "x3", "x4"):
            assert lfu.get(one_off) is None
            lfu.put(one_off, one_off)
        assert "h1" in lfu and "h2" in lfu and "x4" in lfu

    def test_aging_lets_new_popularity_overtake_old(self) -> None:
        lfu = LFUCache(2, age_every=20)
        for _ in range(30):
            if lfu.get("old") is None:
                lfu.put("old", 1)
        for _ in range(40):  # old is never used again; new becomes hot
            if lfu.get("new") is None:
                lfu.put("new", 2)
        assert lfu.frequency("new") > lfu.frequency("old")
        lfu.get("x")
        lfu.put("x", 3)
        assert "old" not in lfu and "new" in lfu

    def test_without_aging_the_once_hot_entry_would_stay(self) -> None:
        """The same trace with aging effectively off keeps the stale entry: aging is what moves it."""
        lfu = LFUCache(2, age_every=10**9)
        for _ in range(30):
            if lfu.get("old") is None:
                lfu.put("old", 1)
        for _ in range(20):
            if lfu.get("new") is None:
                lfu.put("new", 2)
        lfu.get("x")
        lfu.put("x", 3)
        assert "old" in lfu and "new" not in lfu

    def test_a_returning_key_keeps_its_history(self) -> None:
        lfu = LFUCache(1, age_every=10**9)
        for _ in range(5):
            if lfu.get("a") is None:
                lfu.put("a", 1)
        lfu.get("b")
        lfu.put("b", 2)  # a evicted (only one slot), but its count is remembered
        assert "a" not in lfu and lfu.frequency("a") == 5

    def test_reloaded_version_inherits_the_old_versions_frequency(self) -> None:
        lfu = LFUCache(3, age_every=10**9)
        for _ in range(10):
            if lfu.get("m1") is None:
                lfu.put("m1", 1)
        lfu.pop("m1")
        lfu.put("m2", 2, like="m1")
        assert lfu.frequency("m2") == 10


def test_make_policy_names() -> None:
    assert isinstance(make_policy("lru", 2), LRUCache)
    assert isinstance(make_policy("lfu", 2), LFUCache)
    with pytest.raises(ValueError, match="lru, lfu"):
        make_policy("fifo", 2)


def loaded(value: str, cost: int = 1):
    return lambda: (value, cost)


class TestModelCache:
    def test_counts_hits_misses_loads_evictions(self) -> None:
        evicted: list[str] = []
        cache: ModelCache[str, str] = ModelCache(2, on_evict=lambda k, v, why: evicted.append(k))
        assert cache.get_or_load("a", loaded("A")) == ("A", False)
        assert cache.get_or_load("a", loaded("X")) == ("A", True)
        cache.get_or_load("b", loaded("B"))
        cache.get_or_load("c", loaded("C"))
        assert evicted == ["a"]
        s = cache.stats()
        assert (s.hits, s.misses, s.loads, s.evictions, s.size) == (1, 3, 3, 1, 2)
        assert s.hit_rate == 0.25
        assert [e["key"] for e in s.entries] == ["c", "b"]

    def test_concurrent_misses_share_one_load(self) -> None:
        """Single flight: N concurrent misses for one key cause exactly one load."""
        cache: ModelCache[str, str] = ModelCache(3)
        calls = 0
        gate = threading.Event()

        def slow_load() -> tuple[str, int]:
            nonlocal calls
            calls += 1
            gate.wait(5)
            return "A", 1

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(cache.get_or_load, "a", slow_load) for _ in range(8)]
            while cache.stats().misses < 8:
                threading.Event().wait(0.005)
            gate.set()
            results = [f.result(5) for f in futures]
        assert calls == 1
        assert results == [("A", False)] * 8
        assert cache.stats().loads == 1

    def test_failed_load_is_not_cached_and_every_waiter_sees_it(self) -> None:
        cache: ModelCache[str, str] = ModelCache(3)
        gate = threading.Event()
        calls = 0

        def failing() -> tuple[str, int]:
            nonlocal calls
            calls += 1
            gate.wait(5)
            raise OSError("disk on fire")

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(cache.get_or_load, "a", failing) for _ in range(4)]
            while cache.stats().misses < 4:
                threading.Event().wait(0.005)
            gate.set()
            for f in futures:
                with pytest.raises(OSError, match="disk on fire"):
                    f.result(5)
        assert calls == 1
        assert "a" not in cache
        assert cache.get_or_load("a", loaded("A")) == ("A", False)  # the next caller retries

    def test_hit_never_waits_on_a_load(self) -> None:
        """Invariant 1: while B loads (blocked), a hit on A completes."""
        cache: ModelCache[str, str] = ModelCache(3)
        cache.get_or_load("a", loaded("A"))
        b_started, release_b = threading.Event(), threading.Event()
        order: list[str] = []

        def slow_b() -> tuple[str, int]:
            b_started.set()
            release_b.wait(10)
            return "B", 1

        def load_b() -> None:
            cache.get_or_load("b", slow_b)
            order.append("b loaded")

        thread = threading.Thread(target=load_b)
        thread.start()
        assert b_started.wait(5)
        assert cache.get_or_load("a", loaded("X")) == ("A", True)
        order.append("a served")
        release_b.set()
        thread.join(5)
        assert order == ["a served", "b loaded"]

    def test_replace_swaps_atomically_and_drops_old(self) -> None:
        cache: ModelCache[tuple[str, str], str] = ModelCache(2)
        cache.get_or_load(("m", "1"), loaded("v1"))
        cache.get_or_load(("x", "1"), loaded("x1"))
        cache.replace(("m", "2"), "v2", 1, remove=(("m", "1"),))
        assert cache.cached_keys() == [("x", "1"), ("m", "2")]
        assert cache.stats().evictions == 0  # a swap is not an eviction

    def test_evict_on_request(self) -> None:
        cache: ModelCache[str, str] = ModelCache(2)
        cache.get_or_load("a", loaded("A"))
        assert cache.evict("a") is True
        assert cache.evict("a") is False
        assert len(cache) == 0

    def test_async_single_flight(self) -> None:
        cache: ModelCache[str, str] = ModelCache(2)
        calls = 0

        def load() -> tuple[str, int]:
            nonlocal calls
            calls += 1
            threading.Event().wait(0.05)
            return "A", 1

        async def main() -> list[tuple[str, bool]]:
            return await asyncio.gather(*(cache.aget_or_load("a", load) for _ in range(10)))

        results = asyncio.run(main())
        assert calls == 1
        assert all(v == "A" for v, _ in results)

    def test_byte_budget(self) -> None:
        cache: ModelCache[str, str] = ModelCache(10, max_bytes=100)
        cache.get_or_load("a", loaded("A", 60))
        cache.get_or_load("b", loaded("B", 60))
        assert cache.cached_keys() == ["b"]
        assert cache.total_bytes == 60


def test_a_waiter_timing_out_leaves_the_shared_load_to_the_others() -> None:
    """wait_for cancels the caller's wrapper only: the load goes on and others still get it."""
    release = threading.Event()
    started = threading.Event()
    pool = ThreadPoolExecutor(1)
    cache: ModelCache[str, str] = ModelCache(2, submit=lambda _key, run: pool.submit(run))

    def slow() -> tuple[str, int]:
        started.set()
        release.wait(5)
        return "A", 1

    async def main() -> tuple[str, bool]:
        with pytest.raises(TimeoutError):
            await cache.aget_or_load("a", slow, timeout=0.05)
        assert started.is_set() and cache.loading("a")
        second = asyncio.create_task(cache.aget_or_load("a", slow, timeout=5))
        await asyncio.sleep(0.05)
        release.set()
        return await second

    try:
        assert asyncio.run(main()) == ("A", False)
        assert cache.loads == 1 and "a" in cache and not cache.loading("a")
    finally:
        release.set()
        pool.shutdown()
