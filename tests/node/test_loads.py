"""node.loads: the byte budget holds at admission (a model larger than the whole budget is refused)."""

from __future__ import annotations

import logging

import pytest

from coordinator.registry import Registry
from node.errors import ModelTooLarge
from node.http.common import map_error
from tests.helpers import PublishFn
from tests.node.parts import make_node


def test_a_model_larger_than_the_budget_is_refused_counted_and_logged(
    registry: Registry, publish: PublishFn, caplog: pytest.LogCaptureFixture
) -> None:
    publish("small", "1.0", rounds=2)
    publish("big", "1.0", rounds=400)
    small, big = ("small", "1.0"), ("big", "1.0")
    probe = make_node(registry)  # no budget: learn what each costs resident
    probe.loads.get_or_load(small)
    small_cost = probe.loads.cache.total_bytes
    probe.loads.get_or_load(big)
    big_cost = probe.loads.cache.total_bytes - small_cost
    assert big_cost > 2 * small_cost
    budget = (small_cost + big_cost) // 2  # room for the small model, never for the big one

    node = make_node(registry, cache_max_bytes=budget)
    node.loads.get_or_load(small)
    with caplog.at_level(logging.ERROR, "modelcache.service"), pytest.raises(ModelTooLarge) as refused:
        node.loads.get_or_load(big)
    assert refused.value.cost == big_cost and refused.value.budget == budget
    assert f"more than the whole cache budget of {budget} bytes" in str(refused.value)
    # Refused, not cached over the budget; and the small model was not pushed out for it.
    assert node.loads.cache.cached_keys() == [small] and node.loads.cache.total_bytes <= budget
    failures = node.metrics.registry.get_sample_value(
        "modelcache_model_load_failures_total", {"model_type": "big", "reason": "too_large"}
    )
    assert failures == 1
    assert "load refused" in caplog.text and "big 1.0" in caplog.text
    status, body, _ = map_error(refused.value, registry.root, "POST", "/api/v1/models/big/predict")
    assert status == 507 and body["code"] == "model_too_large"
