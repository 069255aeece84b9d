"""The arc and cost policies on real nodes (`MODELCACHE_CACHE_POLICY`), each beside LRU on one trace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from coordinator.registry import Registry
from tests.helpers import FEATURES, NodeProcess, PublishFn, write_slow_model

ROW = [0.5] * len(FEATURES)
FAST = {"MODELCACHE_ONDEMAND_LOADS_PER_MIN": "100000"}


def ask(c: httpx.Client, url: str, model_type: str) -> bool:
    """Predict with `model_type`; whether it was a cache hit."""
    r = c.post(f"{url}/api/v1/models/{model_type}/predict", json={"features": ROW})
    assert r.status_code == 200, r.text
    return r.json()["cached"]


@pytest.mark.parametrize(("policy", "slow_stays"), [("cost", True), ("lru", False)])
def test_cost_policy_keeps_the_slow_model_while_cheap_ones_churn(
    registry: Registry,
    publish: PublishFn,
    node_process: Callable[..., NodeProcess],
    tmp_path: Path,
    policy: str,
    slow_stays: bool,
) -> None:
    write_slow_model(tmp_path / "slow.json", n_trees=800)
    registry.publish(tmp_path / "slow.json", "slow", "1.0")
    for name in ("a", "b", "c"):
        publish(name, "1.0", rounds=2)
    node = node_process(registry.root, MODELCACHE_CACHE_SIZE="2", MODELCACHE_CACHE_POLICY=policy, **FAST)
    with httpx.Client(timeout=60) as c:
        assert ask(c, node.url, "slow") is False
        for _ in range(4):
            for cheap in ("a", "b", "c"):
                ask(c, node.url, cheap)
        assert ask(c, node.url, "slow") is slow_stays
        stats = c.get(f"{node.url}/api/v1/cache/stats").json()
    assert stats["cache_policy"] == policy and stats["cached_models"] <= 2
    assert stats["evictions_by_reason"]["capacity"] == stats["evictions"] > 0


@pytest.mark.parametrize(("policy", "hot_survive"), [("arc", True), ("lru", False)])
def test_arc_keeps_hot_models_through_a_scan(
    registry: Registry,
    publish: PublishFn,
    node_process: Callable[..., NodeProcess],
    policy: str,
    hot_survive: bool,
) -> None:
    names = ["h1", "h2", "x1", "x2", "x3", "x4"]
    for name in names:
        publish(name, "1.0", rounds=2)
    node = node_process(registry.root, MODELCACHE_CACHE_SIZE="3", MODELCACHE_CACHE_POLICY=policy, **FAST)
    with httpx.Client(timeout=30) as c:
        for _ in range(3):
            ask(c, node.url, "h1")
            ask(c, node.url, "h2")
        for one_off in ("x1", "x2", "x3", "x4"):
            assert ask(c, node.url, one_off) is False
        assert [ask(c, node.url, hot) for hot in ("h1", "h2")] == [hot_survive, hot_survive]
        stats = c.get(f"{node.url}/api/v1/cache/stats").json()
    assert stats["cache_policy"] == policy and stats["cached_models"] == 3


def test_byte_budget_holds_under_the_cost_policy(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    for i in range(5):
        publish(f"m{i}", "1.0", rounds=3)
    env = {"MODELCACHE_CACHE_SIZE": "10", "MODELCACHE_CACHE_POLICY": "cost", **FAST}
    probe = node_process(registry.root, **env)
    with httpx.Client(timeout=30) as c:
        ask(c, probe.url, "m0")
        one = c.get(f"{probe.url}/api/v1/cache/stats").json()["cache_bytes"]
    probe.stop()
    budget = int(one * 2.5)  # room for two models, not three
    node = node_process(registry.root, MODELCACHE_CACHE_MAX_BYTES=str(budget), **env)
    with httpx.Client(timeout=30) as c:
        for i in [0, 1, 2, 3, 4, 0, 2, 4]:
            ask(c, node.url, f"m{i}")
            stats = c.get(f"{node.url}/api/v1/cache/stats").json()
            assert stats["cache_bytes"] <= budget and stats["cached_models"] <= 2
    assert stats["evictions_by_reason"].get("bytes", 0) > 0
    assert [p.get("max_bytes") for p in stats["hit_ratio_curve"]] == [budget, 2 * budget, 4 * budget]
