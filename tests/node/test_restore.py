"""Warm restart (node.restore): plan and restore in process, then real nodes stopped and started."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from coordinator.control import Control
from coordinator.registry import Registry
from node.cache_state import CacheState, SavedEntry, read_state, state_path, write_state
from node.parts import NodeParts
from node.restore import WarmRestart, plan_restore
from tests.helpers import HungReads, NodeProcess, PublishFn, corrupt, eventually, metric
from tests.node.parts import make_node

ROW = [0.1, 0.2, 0.3, 0.4]


def entry(model_type: str, uses: int, resident: int = 0, version: str = "1.0.0") -> SavedEntry:
    return SavedEntry(model_type, version, uses, last_used=float(uses), resident_bytes=resident)


# -- the plan (pure) --------------------------------------------------------------------------


def test_the_plan_takes_the_hottest_that_resolve_and_fit_the_slots() -> None:
    saved = CacheState("n", 0, [entry("a", 1), entry("b", 9), entry("gone", 8), entry("c", 5)])
    planned, no_room = plan_restore(
        saved.hottest(), lambda e: None if e.model_type == "gone" else (e.model_type, "2.0.0"), 2, None
    )
    assert [p.key for p in planned] == [("b", "2.0.0"), ("c", "2.0.0")] and no_room == 1


def test_the_plan_keeps_to_the_byte_budget_and_skips_what_does_not_fit() -> None:
    saved = [entry("big", 9, resident=80), entry("mid", 5, resident=30), entry("small", 1, resident=10)]
    planned, no_room = plan_restore(saved, lambda e: (e.model_type, e.version), 3, 100)
    assert [p.key[0] for p in planned] == ["big", "small"] and no_room == 1


def test_two_entries_resolving_to_one_version_restore_it_once() -> None:
    saved = [entry("a", 9, version="1.0.0"), entry("a", 3, version="2.0.0")]
    planned, no_room = plan_restore(saved, lambda e: ("a", "2.0.0"), 3, None)
    assert [(p.key, p.entry.uses) for p in planned] == [(("a", "2.0.0"), 9)] and no_room == 0


# -- restore and save in process, over a real registry -----------------------------------------


def warm_restart(parts: NodeParts, path: Path, budget_s: float = 30.0) -> WarmRestart:
    return WarmRestart(path, "n1", parts.loads, parts.resolver, parts.metrics, budget_s=budget_s)


def sample(parts: NodeParts, name: str, **labels: str) -> float:
    return parts.metrics.registry.get_sample_value(name, labels) or 0.0


def test_restore_resolves_again_skips_what_is_gone_and_keeps_the_uses(
    registry: Registry, publish: PublishFn, tmp_path: Path
) -> None:
    for model_type in ("churn", "fraud", "ltv"):
        publish(model_type, "1.0.0")
    path = tmp_path / "state.json"
    before = make_node(registry, cache_size=3)
    for model_type, hits in (("churn", 5), ("fraud", 1), ("ltv", 2)):
        before.service.warm([model_type])
        for _ in range(hits):
            before.loads.get_or_load((model_type, "1.0.0"))
    saver = warm_restart(before, path)
    saver.restore()  # nothing saved yet: a cold start, after which saving is allowed
    saver.stop()
    saved = {e.model_type: e for e in read_state(path).entries}  # type: ignore[union-attr]
    assert {t: e.uses for t, e in saved.items()} == {"churn": 6, "fraud": 2, "ltv": 3}
    assert all(e.default and e.resident_bytes > 0 for e in saved.values())

    # Meanwhile: churn gets a new latest, ltv is pinned back, fraud leaves the registry.
    publish("churn", "1.1.0")
    publish("ltv", "0.9.0")
    shutil.rmtree(registry.root / "fraud")
    after = make_node(registry, cache_size=3, pins={"ltv": "0.9.0"})
    restored = warm_restart(after, path).restore()

    assert restored == ["churn:1.1.0", "ltv:0.9.0"]  # hottest first
    stats = after.loads.stats()
    assert stats["cache_hits"] == stats["cache_misses"] == 0  # no request asked for these
    assert {m["model_type"]: m["uses"] for m in stats["models"]} == {"churn": 6, "ltv": 3}
    assert sample(after, "modelcache_restored_models_total") == 2
    assert sample(after, "modelcache_restore_skipped_total", reason="gone") == 1


def test_restore_stops_at_the_cache_capacity_hottest_first(
    registry: Registry, publish: PublishFn, tmp_path: Path
) -> None:
    for model_type in ("a", "b", "c", "d"):
        publish(model_type, "1.0.0")
    path = tmp_path / "state.json"
    write_state(
        path, CacheState("n1", 0, [entry(t, uses) for t, uses in zip("abcd", (1, 7, 3, 9), strict=True)])
    )
    node = make_node(registry, cache_size=2)
    assert warm_restart(node, path).restore() == ["d:1.0.0", "b:1.0.0"]
    assert sorted(node.loads.cache.cached_keys()) == [("b", "1.0.0"), ("d", "1.0.0")]
    assert node.loads.stats()["evictions"] == 0  # a restore never pushes out what it restored
    assert sample(node, "modelcache_restore_skipped_total", reason="room") == 2


def test_a_restore_past_its_budget_lets_the_node_turn_ready_and_the_load_lands_later(
    registry: Registry, publish: PublishFn, tmp_path: Path, hung_reads: HungReads
) -> None:
    publish("fast", "1.0.0")
    publish("hung", "1.0.0")
    hung_reads.hang("hung", "1.0.0")
    path = tmp_path / "state.json"
    write_state(path, CacheState("n1", 0, [entry("hung", 9), entry("fast", 4)]))
    node = make_node(registry)
    assert warm_restart(node, path, budget_s=0.5).restore() == ["fast:1.0.0"]
    assert sample(node, "modelcache_restore_skipped_total", reason="budget") == 1
    hung_reads.release.set()  # the hung read returns: the load lands after the restore gave up
    assert eventually(lambda: node.loads.cache.peek(("hung", "1.0.0")) is not None)


def test_entries_beyond_the_budget_are_not_even_resolved(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, CacheState("n1", 0, [entry("a", 4), entry("b", 2)]))
    node = make_node(registry)
    assert warm_restart(node, path, budget_s=0.0).restore() == []
    assert sample(node, "modelcache_restore_skipped_total", reason="budget") == 2


def test_a_corrupt_artifact_is_not_restored(registry: Registry, publish: PublishFn, tmp_path: Path) -> None:
    corrupt(registry, publish("a", "1.0.0"))
    path = tmp_path / "state.json"
    write_state(path, CacheState("n1", 0, [entry("a", 4)]))
    node = make_node(registry)
    assert warm_restart(node, path).restore() == []
    assert node.loads.cache.cached_keys() == []
    assert sample(node, "modelcache_model_load_failures_total", model_type="a", reason="checksum") == 1
    assert sample(node, "modelcache_restore_skipped_total", reason="failed") == 1


def test_a_junk_state_file_is_logged_and_the_node_starts_cold(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"format": "modelcache-cache-state", "version": 1, "entries": [')
    node = make_node(registry)
    restart = warm_restart(node, path)
    with caplog.at_level(logging.ERROR, "modelcache.restore"):
        assert restart.restore() == []
    assert "ignoring the state file, starting cold" in caplog.text and "not JSON" in caplog.text
    assert restart.save() and read_state(path) is not None  # replaced by a good one


def test_nothing_is_saved_before_the_restore_ran(registry: Registry, tmp_path: Path) -> None:
    """A node stopped while restoring must not overwrite the state it has not restored yet."""
    path = tmp_path / "state.json"
    write_state(path, CacheState("n1", 0, [entry("a", 4)]))
    restart = warm_restart(make_node(registry), path)
    restart.stop()
    assert [e.model_type for e in read_state(path).entries] == ["a"]  # type: ignore[union-attr]


# -- real nodes: SIGTERM, start again --------------------------------------------------------


def serve(node: NodeProcess, model_type: str, times: int) -> list[bool]:
    url = f"{node.url}/api/v1/models/{model_type}/predict"
    return [httpx.post(url, json={"features": ROW}, timeout=30).json()["cached"] for _ in range(times)]


def stats(node: NodeProcess) -> dict[str, object]:
    return httpx.get(f"{node.url}/api/v1/cache/stats", timeout=10).json()  # type: ignore[no-any-return]


def test_a_restarted_node_is_ready_with_its_models_and_loads_none_on_first_request(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    types = ("churn", "fraud", "ltv")
    for model_type in types:
        publish(model_type, "1.0.0")
    env = {"MODELCACHE_STATE_DIR": str(tmp_path / "state"), "MODELCACHE_NODE_ID": "n1"}
    first = node_process(registry.root, **env)
    for i, model_type in enumerate(types):
        assert serve(first, model_type, 2 + i) == [False] + [True] * (1 + i)
    first.stop()  # SIGTERM: the node saves its state on the way out
    saved = read_state(state_path(tmp_path / "state", "n1"))
    assert saved is not None and {e.model_type: e.uses for e in saved.entries} == {
        "churn": 2,
        "fraud": 3,
        "ltv": 4,
    }

    second = node_process(registry.root, **env)  # returns once /readyz answered 200
    at_ready = stats(second)
    assert at_ready["cached_models"] == 3 and at_ready["total_loads"] == 3
    assert at_ready["cache_misses"] == 0
    assert {m["model_type"]: m["uses"] for m in at_ready["models"]} == {"churn": 2, "fraud": 3, "ltv": 4}  # type: ignore[attr-defined]
    for model_type in types:
        assert serve(second, model_type, 1) == [True]  # a hit: nothing loads on the first request
    after = stats(second)
    assert after["total_loads"] == 3 and after["cache_misses"] == 0 and after["cache_hits"] == 3
    assert metric(second.url, "modelcache_restored_models_total") == 3
    assert "warm restart: restored 3 of 3 saved models" in second.log.read_text()


def test_a_restarted_cluster_node_restores_the_versions_the_cluster_now_wants(
    registry: Registry,
    publish: PublishFn,
    cluster: Callable[..., list[NodeProcess]],
    control: Control,
    tmp_path: Path,
) -> None:
    for model_type in ("churn", "fraud"):
        publish(model_type, "1.0.0")
        publish(model_type, "1.1.0")
    env = {"MODELCACHE_STATE_DIR": str(tmp_path / "state"), "MODELCACHE_NODE_ID": "n1"}
    [node] = cluster(1, **env)
    assert serve(node, "churn", 1) == [False] and serve(node, "fraud", 1) == [False]
    node.stop()
    saved = read_state(state_path(tmp_path / "state", "n1"))
    assert saved is not None and {(e.model_type, e.version) for e in saved.entries} == {
        ("churn", "1.1.0"),
        ("fraud", "1.1.0"),
    }
    control.pin("churn", "1.0.0")  # while the node is down
    publish("fraud", "1.2.0")

    [again] = cluster(1, **env)
    cached = {(m["model_type"], m["version"]) for m in stats(again)["models"]}  # type: ignore[attr-defined]
    assert cached == {("churn", "1.0.0"), ("fraud", "1.2.0")}
    body = httpx.post(f"{again.url}/api/v1/models/churn/predict", json={"features": ROW}, timeout=30).json()
    assert body["version"] == "1.0.0" and body["cached"] is True
    assert "warm restart: restored 2 of 2 saved models" in again.log.read_text()


def test_the_state_is_saved_periodically_so_a_killed_node_restores_too(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """SIGKILL (an OOM kill) leaves no time to save: the periodic save is what is restored."""
    publish("churn", "1.0.0")
    env = {
        "MODELCACHE_STATE_DIR": str(tmp_path / "state"),
        "MODELCACHE_NODE_ID": "n1",
        "MODELCACHE_STATE_SAVE_INTERVAL_S": "0.2",
    }
    path = state_path(tmp_path / "state", "n1")
    first = node_process(registry.root, **env)
    assert serve(first, "churn", 2) == [False, True]
    assert eventually(lambda: (s := read_state(path)) is not None and [e.uses for e in s.entries] == [2])
    first.kill()

    second = node_process(registry.root, **env)
    assert [m["model_type"] for m in stats(second)["models"]] == ["churn"]  # type: ignore[attr-defined]
    assert serve(second, "churn", 1) == [True]


def test_thousands_of_gone_entries_cost_a_few_log_lines_not_thousands(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    write_state(path, CacheState("n1", 0, [entry(f"gone{i}", 5) for i in range(4000)]))
    node = make_node(registry)
    with caplog.at_level(logging.INFO, "modelcache.restore"):
        assert warm_restart(node, path).restore() == []
    assert sample(node, "modelcache_restore_skipped_total", reason="gone") == 4000
    assert len(caplog.records) < 20
    assert "4000 gone" in caplog.text
