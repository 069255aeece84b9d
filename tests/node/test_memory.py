"""The byte budget bounds a real node's memory: churn JSON and UBJ models through a small budget.

Bounds, not timings: after every request (each a load that evicts), the node's
RSS above its idle RSS stays within 1.35x the budget plus a fixed allowance for
the interpreter's own growth (first predictions, the HTTP stack warming up), and
`cache_bytes` within the budget. Before the resident-cost budget and
`malloc_trim` this node grew ~4x the budget (see the commit message).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import xgboost as xgb

from coordinator.registry import Registry
from node import memory
from tests.helpers import NodeProcess, eventually, metric, write_slow_model

MB = 1 << 20
BUDGET = 40 * MB
ALLOWANCE = 16 * MB  # interpreter/HTTP growth unrelated to models, measured ~5-10 MB
ROW = [0.1, 0.2, 0.3, 0.4]


def publish_big(registry: Registry, tmp_path: Path, n: int) -> list[str]:
    """`n` ~16 MB JSON models and `n` UBJ twins (~9 MB); each resident ~13 MB."""
    json_path = tmp_path / "big.json"
    write_slow_model(json_path, n_trees=1000)
    booster = xgb.Booster()
    booster.load_model(json_path)
    ubj_path = tmp_path / "big.ubj"
    booster.save_model(ubj_path)
    names = []
    for i in range(n):
        for fmt, path in (("json", json_path), ("ubj", ubj_path)):
            registry.publish(path, f"{fmt}{i}", "1.0")
            names.append(f"{fmt}{i}")
    return names


def test_churn_keeps_rss_and_cache_bytes_within_the_budget(
    registry: Registry, tmp_path: Path, node_process: Callable[..., NodeProcess]
) -> None:
    names = publish_big(registry, tmp_path, 3)
    cost = memory.estimate_cost(registry.metadata("ubj0", "1.0"))  # what each is charged once loaded
    assert 2 * cost < BUDGET < 4 * cost  # the budget holds a few models, not all six
    node = node_process(registry.root, MODELCACHE_CACHE_MAX_BYTES=str(BUDGET), MODELCACHE_CACHE_SIZE="10")
    # Idle means with XGBoost and scikit-learn imported: the node imports them once it is ready.
    assert eventually(lambda: "model libraries imported" in node.log.read_text(), timeout=60)
    with httpx.Client(timeout=60) as c:
        idle = metric(node.url, "process_resident_memory_bytes")
        assert idle
        worst_rss = worst_bytes = 0.0
        for _ in range(3):
            for name in names:
                r = c.post(f"{node.url}/api/v1/predict", json={"model_type": name, "features": ROW})
                assert r.status_code == 200, r.text
                stats = c.get(f"{node.url}/api/v1/cache/stats").json()
                worst_bytes = max(worst_bytes, stats["cache_bytes"])
                worst_rss = max(worst_rss, metric(node.url, "process_resident_memory_bytes") - idle)
        entry = stats["models"][0]
        assert entry["resident_bytes"] > 0 and entry["size_bytes"] > 0
        assert stats["evictions_by_reason"].get("bytes", 0) >= 10  # it really churned
    assert worst_bytes <= BUDGET
    assert worst_rss <= 1.35 * BUDGET + ALLOWANCE, (worst_rss / MB, BUDGET / MB)


def test_json_is_parsed_in_a_child_and_gives_the_same_model(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    write_slow_model(path, n_trees=50)
    raw = path.read_bytes()
    from_child = memory._parse_in_child(raw, timeout_s=60)
    assert from_child is not None  # the fork path ran (no silent fallback)
    assert from_child == memory._parse_here(raw) == memory.json_to_ubj(raw)
    booster = xgb.Booster()
    booster.load_model(bytearray(from_child))
    assert booster.num_boosted_rounds() == 50


def test_a_child_that_fails_or_hangs_falls_back_to_parsing_here(tmp_path: Path) -> None:
    assert memory._parse_in_child(b"not a model", timeout_s=30) is None  # the child exits 1
    path = tmp_path / "model.json"
    write_slow_model(path, n_trees=3000)  # ~1 s to parse: longer than the timeout below
    assert memory._parse_in_child(path.read_bytes(), timeout_s=0.01) is None  # killed, reaped
