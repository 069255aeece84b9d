"""The eviction policies: one contract for all, then what each one is for (table-style, no server)."""

from __future__ import annotations

import pytest

from node.policies import (
    ARCCache,
    Cache,
    CostAwareCache,
    Evicted,
    LFUCache,
    LRUCache,
    Reason,
    make_policy,
    policy_name,
)


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

    def test_update_corrects_cost_in_place_and_evicts_others_to_fit(self) -> None:
        c = self.make(3, max_cost=100)
        c.put("a", "A", 10)
        c.put("b", "B", 30)
        evicted = c.update("a", 80, load_s=2.0)
        assert keys(evicted) == ["b"] and evicted[0].reason is Reason.BYTES
        assert list(c) == ["a"] and c.total_cost == 80 and c.peek("a") == "A"

    def test_a_long_mixed_run_keeps_both_bounds(self) -> None:
        c = self.make(4, max_cost=1000)
        for i in range(400):
            key = f"k{(i * 7) % 13 if i % 5 else 100 + i}"
            if c.get(key) is None:
                c.put(key, key, 50 + (i * 37) % 400, load_s=0.01 * (1 + i % 9))
            assert len(c) <= 4 and c.total_cost <= 1000
            assert c.total_cost == sum(c.cost(k) for k in c)

    def test_a_restored_hot_entry_is_not_the_next_victim(self) -> None:
        """A warm restart inserts the hottest first, seeded with its uses, then restores the saved
        recency: a newcomer then pushes out the cold entry, not the hot one (node.restore)."""
        c = self.make(2)
        c.seed("hot", 50)
        c.put("hot", "H", load_s=0.01)
        c.seed("cold", 1)
        c.put("cold", "C", load_s=0.01)
        c.arrange(["cold", "hot"])  # least recently used first, as saved
        assert keys(c.put("new", "N", load_s=0.01)) == ["cold"]

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


class SeededFrequencyContract(CacheContract):
    """LFU, ARC and the cost policy keep a restored entry's record, not only its place."""

    def test_a_seeded_entry_survives_a_scan_of_one_offs(self) -> None:
        c = self.make(2)
        c.seed("hot", 50)
        c.put("hot", "H", load_s=0.01)
        for one_off in ("x1", "x2", "x3", "x4"):
            c.get(one_off)
            c.put(one_off, one_off, load_s=0.01)
        assert "hot" in c


class TestLFUCache(SeededFrequencyContract):
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
    assert isinstance(make_policy("arc", 2), ARCCache)
    assert isinstance(make_policy("cost", 2), CostAwareCache)
    assert policy_name(make_policy("cost", 2)) == "cost"
    with pytest.raises(ValueError, match="lru, lfu, arc, cost"):
        make_policy("fifo", 2)


class TestARCCache(SeededFrequencyContract):
    policy = ARCCache

    def test_hot_entries_survive_a_scan_of_one_offs(self) -> None:
        arc = self.make(3)
        for _ in range(5):
            for hot in ("h1", "h2"):
                if arc.get(hot) is None:
                    arc.put(hot, hot)
        for one_off in ("x1", "x2", "x3", "x4", "x5", "x6"):
            assert arc.get(one_off) is None
            arc.put(one_off, one_off)
        assert "h1" in arc and "h2" in arc and "x6" in arc

    def test_a_hit_moves_an_entry_from_recency_to_frequency(self) -> None:
        arc = self.make(3)
        arc.put("a", 1)
        arc.put("b", 2)
        assert arc.lists[:2] == (["a", "b"], [])
        arc.get("a")
        assert arc.lists[:2] == (["b"], ["a"])

    def test_a_ghost_hit_in_b1_grows_the_recency_target(self) -> None:
        arc = self.make(3)
        arc.put("hot", 0)
        arc.get("hot")  # in T2
        arc.put("a", 1)
        arc.put("b", 2)
        arc.put("c", 3)  # T1 (a, b) is over its target 0: a goes to the ghost list B1
        assert arc.lists == (["b", "c"], ["hot"], ["a"], []) and arc.p == 0
        assert arc.get("a") is None
        assert arc.p == 1
        arc.put("a", 1)  # seen twice now: straight into T2
        assert "a" in arc.lists[1] and "a" not in arc.lists[2]

    def test_a_ghost_hit_in_b2_shrinks_the_recency_target(self) -> None:
        arc = self.make(2)
        arc.p = 2.0
        for key in ("a", "b"):
            arc.put(key, key)
            arc.get(key)  # both in T2
        arc.put("c", 3)  # T1 is within its target: T2's least recent (a) goes to B2
        assert arc.lists[3] == ["a"]
        assert arc.get("a") is None
        assert arc.p == 1.0

    def test_ghost_lists_stay_bounded(self) -> None:
        arc = self.make(3)
        for i in range(200):
            arc.get(f"k{i % 50}")
            arc.put(f"k{i % 50}", i)
            t1, t2, b1, b2 = arc.lists
            assert len(t1) + len(b1) <= 3 and len(t1) + len(t2) + len(b1) + len(b2) <= 6

    def test_reloaded_version_takes_the_old_versions_list(self) -> None:
        arc = self.make(3)
        arc.put("m1", 1)
        arc.get("m1")
        arc.pop("m1")
        arc.put("m2", 2, like="m1")
        assert arc.lists[1] == ["m2"] and "m1" not in arc.lists[3]


class TestCostAwareCache(SeededFrequencyContract):
    policy = CostAwareCache

    def test_a_slow_model_is_not_thrown_out_for_a_cheap_one(self) -> None:
        sequence = [("slow", 5.0), ("cheap1", 0.01), ("cheap2", 0.01)]
        cost, lru = self.make(2), LRUCache(2)
        for cache in (cost, lru):
            for key, load_s in sequence:
                cache.get(key)
                cache.put(key, key, load_s=load_s)
        assert "slow" in cost and "cheap1" not in cost
        assert "slow" not in lru  # what the cost policy exists to avoid

    def test_frequency_outweighs_load_time_when_large_enough(self) -> None:
        c = self.make(2, timer=Clock())
        c.get("busy")
        c.put("busy", 1, load_s=0.1)
        for _ in range(99):
            c.get("busy")
        c.get("slow")
        c.put("slow", 2, load_s=1.0)
        c.get("new")
        c.put("new", 3, load_s=1.0)
        assert "busy" in c and "slow" not in c

    def test_under_a_byte_budget_the_larger_model_goes_first(self) -> None:
        c = self.make(10, max_cost=1000)
        c.put("big", 1, 600, load_s=1.0)
        c.put("small", 2, 100, load_s=1.0)
        assert c.priority("small") > c.priority("big")
        assert keys(c.put("new", 3, 400, load_s=1.0)) == ["big"]

    def test_inflation_ages_out_a_once_hot_entry(self) -> None:
        c = self.make(2)
        c.put("old", 1, load_s=1.0)
        for _ in range(3):
            c.get("old")
        for i in range(6):  # one-offs, each as slow as old: old is never used again
            c.get(f"x{i}")
            c.put(f"x{i}", i, load_s=1.0)
        assert "old" not in c and c.inflation > 0

    def test_without_inflation_the_once_hot_entry_would_stay(self) -> None:
        """The same trace with L pinned at 0: aging is what lets the stale entry go."""

        class NoAging(CostAwareCache):
            def _on_evict(self, key: object) -> None:
                pass

        c = NoAging(2)
        c.put("old", 1, load_s=1.0)
        for _ in range(3):
            c.get("old")
        for i in range(6):
            c.get(f"x{i}")
            c.put(f"x{i}", i, load_s=1.0)
        assert "old" in c

    def test_load_time_is_measured_inherited_or_the_mean(self) -> None:
        c = self.make(5)
        c.put("a", 1, load_s=2.0)
        c.put("b", 2, load_s=4.0)
        c.put("unknown", 3)
        assert c.load_seconds("unknown") == 3.0
        c.pop("a")
        c.put("a2", 4, like="a")
        assert c.load_seconds("a2") == 2.0

    def test_update_reprices_with_the_measured_load_time(self) -> None:
        c = self.make(3)
        c.put("x", 1, load_s=0.01)
        before = c.priority("x")
        c.update("x", 0, load_s=10.0)
        assert c.priority("x") > before
