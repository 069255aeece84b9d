"""The online hit-ratio curve: ghost caches against real caches of 1x, 2x, 4x the size, same trace."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest

from coordinator.registry import Registry
from node.cache import ModelCache
from node.curve import HitRatioCurve
from node.metrics import NodeMetrics
from tests.helpers import FEATURES, NodeProcess, PublishFn, metric

ACCURACY = 0.05  # the target: within 0.05 of what a node of that size measures


def zipf_trace(n_models: int, length: int, seed: int = 0, s: float = 1.0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_models + 1) ** s
    return [f"m{r}" for r in rng.choice(n_models, size=length, p=weights / weights.sum())]


def bytes_of(key: str) -> int:
    return 100 + 37 * (int(key[1:]) % 11)  # heterogeneous sizes, fixed per model


def measured(policy: str, capacity: int, trace: list[str], max_bytes: int | None = None) -> float:
    cache: ModelCache[str, str] = ModelCache(capacity, max_bytes, policy=policy)
    for key in trace:
        cache.get_or_load(key, lambda key=key: (key, bytes_of(key)))
    return cache.stats().hit_rate


@pytest.mark.parametrize("policy", ["lru", "lfu", "arc", "cost"])
def test_estimates_match_caches_of_that_size_on_a_zipf_trace(policy: str) -> None:
    trace = zipf_trace(60, 6000)
    node: ModelCache[str, str] = ModelCache(3, policy=policy)
    for key in trace:
        node.get_or_load(key, lambda key=key: (key, 1))
    curve = node.stats().hit_ratio_curve
    assert [p.capacity for p in curve] == [3, 6, 12]
    assert abs(curve[0].hit_ratio - node.stats().hit_rate) <= ACCURACY
    for point in curve:
        truth = measured(policy, point.capacity, trace)
        assert abs(point.hit_ratio - truth) <= ACCURACY, (point, truth)
    assert curve[0].hit_ratio < curve[1].hit_ratio < curve[2].hit_ratio


@pytest.mark.parametrize("policy", ["lru", "cost"])
def test_under_a_byte_budget_the_curve_is_by_bytes_too(policy: str) -> None:
    trace = zipf_trace(40, 5000, seed=3)
    node: ModelCache[str, str] = ModelCache(100, max_bytes=600, policy=policy)
    for key in trace:
        node.get_or_load(key, lambda key=key: (key, bytes_of(key)))
    points = node.stats().hit_ratio_curve
    assert [(p.capacity, p.max_bytes) for p in points] == [(100, 600), (200, 1200), (400, 2400)]
    first = {"capacity": 100, "max_bytes": 600, "hit_ratio": round(points[0].hit_ratio, 4)}
    assert points[0].to_json() == first
    for point in points:
        truth = measured(policy, point.capacity, trace, point.max_bytes)
        assert abs(point.hit_ratio - truth) <= ACCURACY, (point, truth)
    assert points[0].hit_ratio < points[1].hit_ratio


def test_a_ghost_learns_the_bytes_of_a_key_it_saw_before_its_load() -> None:
    curve: HitRatioCurve[str] = HitRatioCurve("lru", 2, max_cost=100)
    curve.record("a")  # never loaded yet: charged the mean (nothing known: 0)
    curve.learn("a", 90, 0.5)
    curve.record("b")
    curve.learn("b", 90, 0.5)
    # At 1x (100 bytes) a and b cannot both fit: a went when b's bytes were learned.
    curve.record("a")
    assert [p.hit_ratio for p in curve.points()] == [0.0, pytest.approx(1 / 3), pytest.approx(1 / 3)]


def test_memory_stays_constant_under_endless_distinct_keys() -> None:
    curve: HitRatioCurve[str] = HitRatioCurve("lfu", 3)
    for i in range(20_000):
        curve.record(f"k{i}")
        curve.learn(f"k{i}", 1, 0.01)
    curve.points()  # replays the queued events
    assert len(curve._facts) <= curve._max_facts
    assert all(len(s) <= s.max_items for s in curve._shadows)
    assert all(len(s._freq) <= 10 * s.max_items for s in curve._shadows)  # type: ignore[attr-defined]


def test_counts_halve_every_window_so_the_curve_follows_recent_traffic() -> None:
    curve: HitRatioCurve[str] = HitRatioCurve("lru", 1, window=100)
    for _ in range(100):
        curve.record("a")  # 99 hits of 100
    for i in range(300):
        curve.record(f"x{i}")  # all misses
    assert curve.points()[0].hit_ratio < 0.2  # a cumulative ratio would still say 0.25


def test_a_reload_carries_the_ghost_entry_over() -> None:
    node: ModelCache[str, str] = ModelCache(1)
    node.get_or_load("m@1", lambda: ("v1", 1))
    node.replace("m@2", "v2", 1, remove=("m@1",))
    node.get_or_load("m@2", lambda: ("v2", 1))
    assert [p.hit_ratio for p in node.stats().hit_ratio_curve] == [0.5, 0.5, 0.5]


def test_the_gauge_exports_each_factor() -> None:
    metrics = NodeMetrics()
    node: ModelCache[str, str] = ModelCache(2)
    metrics.track_hit_ratio_curve(node.hit_ratio_estimates)
    for key in ["a", "b", "c", "a", "b", "c", "a"]:
        node.get_or_load(key, lambda key=key: (key, 1))
    get = metrics.registry.get_sample_value
    name = "modelcache_cache_hit_ratio_estimate"
    assert get(name, {"capacity_factor": "1"}) == 0.0  # LRU of 2 cycling over 3 never hits
    assert get(name, {"capacity_factor": "2"}) == pytest.approx(4 / 7)
    assert get(name, {"capacity_factor": "4"}) == pytest.approx(4 / 7)


# -- a real node --------------------------------------------------------------------------------------
def replay(url: str, trace: list[str]) -> dict:
    row = dict.fromkeys(FEATURES, 0.5)
    with httpx.Client(timeout=30) as c:
        for model_type in trace:
            r = c.post(f"{url}/api/v1/models/{model_type}/predict", json={"features": row})
            assert r.status_code == 200, r.text
        return c.get(f"{url}/api/v1/cache/stats").json()


def test_a_real_node_reports_its_curve_and_a_bigger_node_measures_it(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    for i in range(10):
        publish(f"m{i}", "1.0", rounds=2)
    trace = zipf_trace(10, 400, seed=7)
    env = {"MODELCACHE_CACHE_POLICY": "lru", "MODELCACHE_ONDEMAND_LOADS_PER_MIN": "100000"}
    small = node_process(registry.root, MODELCACHE_CACHE_SIZE="2", **env)
    stats = replay(small.url, trace)
    curve = stats["hit_ratio_curve"]
    assert [p["capacity"] for p in curve] == [2, 4, 8]
    assert abs(curve[0]["hit_ratio"] - stats["hit_rate"]) <= ACCURACY
    for factor, point in zip(("1", "2", "4"), curve, strict=True):
        gauge = metric(small.url, "modelcache_cache_hit_ratio_estimate", capacity_factor=factor)
        assert gauge == pytest.approx(point["hit_ratio"], abs=1e-4)
    small.stop()
    # What a node of twice the size measures on the same trace: the 2x estimate's truth.
    bigger = node_process(registry.root, MODELCACHE_CACHE_SIZE="4", **env)
    assert abs(replay(bigger.url, trace)["hit_rate"] - curve[1]["hit_ratio"]) <= ACCURACY


def test_no_lookup_is_lost_when_threads_race_the_drain() -> None:
    from concurrent.futures import ThreadPoolExecutor

    node: ModelCache[str, str] = ModelCache(3, policy="arc")
    trace = zipf_trace(20, 2000, seed=5)

    def run(offset: int) -> None:
        for key in trace[offset:] + trace[:offset]:
            node.get_or_load(key, lambda key=key: (key, 1))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, [0, 500, 1000, 1500]))
    node.curve.points()
    assert node.curve._lookups == 4 * len(trace) == node.hits + node.misses
