from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from node.cache import ModelCache


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


# -- uses, and prefetch (the warm restart's way in) --------------------------------------------
def uses(cache: ModelCache[str, str]) -> dict[str, int]:
    return {e["key"]: e["uses"] for e in cache.stats().entries}


def test_uses_count_the_load_and_every_hit_and_survive_a_reload() -> None:
    cache: ModelCache[str, str] = ModelCache(3)
    for _ in range(3):
        cache.get_or_load("a", loaded("A"))
    assert uses(cache) == {"a": 3}
    cache.replace("a2", "A2", 1, remove=("a",))  # a reload: the new version keeps the record
    cache.replace("a2", "A2'", 1, remove=("a2",))  # reloading the same version too
    assert uses(cache) == {"a2": 3}


def test_prefetch_counts_no_lookup_and_seeds_the_uses() -> None:
    cache: ModelCache[str, str] = ModelCache(3, policy="lfu")
    assert cache.prefetch("a", loaded("A"), uses=7).result(5) == "A"
    s = cache.stats()
    assert (s.hits, s.misses, s.loads) == (0, 0, 1) and uses(cache) == {"a": 7}
    assert cache.prefetch("a", loaded("X")).result(5) == "A"  # cached: no second load
    assert cache.stats().loads == 1
    assert cache._cache.frequency("a") == 7  # type: ignore[attr-defined]  # the policy has the record too


def test_prefetch_joins_a_load_in_flight_and_a_lookup_joins_a_prefetch() -> None:
    gate = threading.Event()
    calls = 0

    def slow() -> tuple[str, int]:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return "A", 1

    with ThreadPoolExecutor(2) as pool:
        cache: ModelCache[str, str] = ModelCache(3, submit=lambda key, run: pool.submit(run))
        first = cache.prefetch("a", slow, uses=4)
        again = cache.prefetch("a", slow)
        looked_up = pool.submit(cache.get_or_load, "a", slow, 5)
        while cache.misses == 0:  # the lookup has joined (a miss) before the load may finish
            time.sleep(0.001)
        gate.set()
        assert first.result(5) == again.result(5) == "A" and looked_up.result(5) == ("A", False)
    assert calls == 1 and cache.stats().loads == 1 and uses(cache) == {"a": 4}
