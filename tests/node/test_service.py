from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from coordinator.errors import InvalidName, ModelNotFound, VersionNotFound
from coordinator.registry import Registry
from node.errors import ChecksumMismatch, LoadRateLimited, ModelLoadError
from node.loader import Loader
from node.parts import NodeParts
from node.runtime import LoadedModel
from node.views import models_view
from tests.helpers import HungReads, PublishFn, corrupt, eventually
from tests.node.parts import make_node

ROW = [[0.1, 0.2, 0.3, 0.4]]


def sample(parts: NodeParts, name: str, **labels: str) -> float:
    value = parts.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def get(parts: NodeParts, model_type: str, version: str | None = None):
    return asyncio.run(parts.service.get(model_type, version))


def test_resolution_explicit_then_pin_then_latest(registry: Registry, publish: PublishFn) -> None:
    for v in ("1.0.0", "1.10.0", "1.9.0", "2.0.0b1"):
        publish("m", v)
    assert get(make_node(registry), "m").version == "1.10.0"
    assert get(make_node(registry), "m", "2.0.0b1").version == "2.0.0b1"
    assert get(make_node(registry, pins={"m": "1.0.0"}), "m").version == "1.0.0"
    assert get(make_node(registry, pins={"m": "2.0.0-b1"}), "m").version == "2.0.0b1"


def test_second_request_is_a_hit(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    parts = make_node(registry)
    assert get(parts, "m").cached is False
    assert get(parts, "m").cached is True
    assert sample(parts, "modelcache_cache_hits_total", model_type="m") == 1
    assert sample(parts, "modelcache_cache_misses_total", model_type="m") == 1
    assert sample(parts, "modelcache_model_load_seconds_count", model_type="m") == 1


def test_unknown_model_and_version(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    parts = make_node(registry)
    with pytest.raises(ModelNotFound):
        get(parts, "nope")
    with pytest.raises(ModelNotFound):
        get(parts, "nope", "1.0")
    with pytest.raises(VersionNotFound):
        get(parts, "m", "3.0")
    with pytest.raises(InvalidName):
        get(parts, "../m")
    # Unknown names never become metric labels.
    assert sample(parts, "modelcache_cache_misses_total", model_type="nope") == 0


def test_corrupt_default_falls_back_to_previous_version(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0.0")
    corrupt(registry, publish("m", "1.1.0"))
    deserialized: list[str] = []

    class Spy(Loader):
        def load_once(self, model_type: str, version: str, before=None) -> LoadedModel:  # type: ignore[no-untyped-def]
            meta = self.registry.metadata(model_type, version)
            raw = self.read_verified(meta)  # raises before deserializing a bad artifact
            if before is not None:
                before(meta)
            deserialized.append(version)
            from node.runtime import deserialize

            return deserialize(meta, raw)

    parts = make_node(registry, loader=Spy(registry, retries=1))
    first = get(parts, "m")
    assert (first.version, first.fallback_from) == ("1.0.0", "1.1.0")
    assert deserialized == ["1.0.0"]  # 1.1.0 never reached the deserializer
    assert sample(parts, "modelcache_fallbacks_total", model_type="m") == 1
    assert sample(parts, "modelcache_model_load_failures_total", model_type="m", reason="checksum") == 1
    # Within the failure TTL the broken version is not retried on every request.
    second = get(parts, "m")
    assert (second.version, second.cached, second.fallback_from) == ("1.0.0", True, "1.1.0")
    assert sample(parts, "modelcache_model_load_failures_total", model_type="m", reason="checksum") == 1


def test_explicit_unloadable_version_is_an_error(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0.0")
    corrupt(registry, publish("m", "1.1.0"))
    with pytest.raises(ChecksumMismatch):
        get(make_node(registry), "m", "1.1.0")


def test_no_loadable_version_at_all(registry: Registry, publish: PublishFn) -> None:
    corrupt(registry, publish("m", "1.0.0"))
    with pytest.raises(ModelLoadError, match="no lower version could be loaded"):
        get(make_node(registry), "m")


def test_reload_picks_up_a_new_version_and_drops_the_old(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0.0")
    parts = make_node(registry)
    get(parts, "m")
    publish("m", "1.1.0")
    assert get(parts, "m").version == "1.0.0"  # new versions wait for a reload
    [outcome] = parts.reloads.reload("m")
    assert (outcome.outcome, outcome.version, outcome.previous) == ("ok", "1.1.0", "1.0.0")
    resolved = get(parts, "m")
    assert (resolved.version, resolved.cached) == ("1.1.0", True)
    assert parts.loads.cached_versions() == {"m": ["1.1.0"]}
    assert sample(parts, "modelcache_reloads_total", source="api", outcome="ok") == 1


def test_failed_reload_keeps_the_old_model_serving(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0.0")
    parts = make_node(registry)
    get(parts, "m")
    corrupt(registry, publish("m", "1.1.0"))
    [outcome] = parts.reloads.reload("m")
    assert outcome.outcome == "failed" and "still serving 1.0.0" in outcome.detail
    resolved = get(parts, "m")
    assert (resolved.version, resolved.cached, resolved.fallback_from) == ("1.0.0", True, None)
    assert sample(parts, "modelcache_reloads_total", source="api", outcome="failed") == 1


def test_reload_all_cached_models(registry: Registry, publish: PublishFn) -> None:
    for mt in ("a", "b"):
        publish(mt, "1.0")
    parts = make_node(registry)
    get(parts, "a")
    get(parts, "b")
    for mt in ("a", "b"):
        publish(mt, "2.0")
    outcomes = parts.reloads.reload()
    assert [(o.model_type, o.version) for o in outcomes] == [("a", "2.0"), ("b", "2.0")]
    assert get(parts, "a").cached and get(parts, "b").version == "2.0"


def test_reload_exact_version_refreshes_it(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    parts = make_node(registry)
    before = get(parts, "m").model
    [outcome] = parts.reloads.reload("m", "1.0")
    assert outcome.outcome == "ok"
    after = get(parts, "m")
    assert after.cached and after.model is not before


def test_reload_under_concurrent_requests_drops_nothing(registry: Registry, publish: PublishFn) -> None:
    """Invariant 2: requests during reloads all succeed, with the old or the new version."""
    publish("m", "1.0.0")
    parts = make_node(registry)
    get(parts, "m")
    publish("m", "1.1.0")
    publish("m", "1.2.0", rounds=50)
    errors: list[BaseException] = []
    versions: list[str] = []
    done = threading.Event()

    async def hammer() -> None:
        while not done.is_set():
            try:
                r = await parts.service.get("m")
                r.model.predict(ROW)
                versions.append(r.version)
            except BaseException as exc:
                errors.append(exc)
            await asyncio.sleep(0)

    async def main() -> None:
        tasks = [asyncio.create_task(hammer()) for _ in range(4)]
        for target in ("1.1.0", "1.2.0"):
            await asyncio.to_thread(parts.reloads.set_pin, "m", target)
            await asyncio.sleep(0.05)
        await asyncio.to_thread(parts.reloads.reload, "m")
        await asyncio.sleep(0.05)
        done.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert errors == []
    assert len(versions) > 50
    assert set(versions) <= {"1.0.0", "1.1.0", "1.2.0"}
    assert versions[-1] == "1.2.0"
    assert get(parts, "m").version == "1.2.0"


def test_pins_switch_versions_and_unpin_returns_to_latest(registry: Registry, publish: PublishFn) -> None:
    for v in ("1.0", "2.0"):
        publish("m", v)
    parts = make_node(registry)
    assert get(parts, "m").version == "2.0"
    outcome = parts.reloads.set_pin("m", "1.0")
    assert (outcome.outcome, outcome.version) == ("ok", "1.0")
    assert get(parts, "m").version == "1.0"
    assert sample(parts, "modelcache_pinned_version_info", model_type="m", version="1.0") == 1
    parts.reloads.set_pin("m", None)
    assert get(parts, "m").version == "2.0"
    assert sample(parts, "modelcache_pinned_version_info", model_type="m", version="1.0") == 0


def test_unload_and_warm(registry: Registry, publish: PublishFn) -> None:
    for mt in ("a", "b", "c", "d"):
        publish(mt, "1.0")
    parts = make_node(registry, cache_size=3)
    assert parts.service.warm(["a", "b", "c", "d"]) == ["a:1.0", "b:1.0", "c:1.0"]
    assert parts.loads.unload("b") == ["1.0"]
    assert sorted(parts.loads.cached_versions()) == ["a", "c"]


def test_stats_use_the_documented_names(registry: Registry, publish: PublishFn) -> None:
    for mt in ("a", "b"):
        publish(mt, "1.0")
    parts = make_node(registry, cache_size=1)
    get(parts, "a")
    get(parts, "a")
    get(parts, "b")
    stats = parts.loads.stats()
    assert {
        k: stats[k]
        for k in ("cache_size", "cached_models", "cache_hits", "cache_misses", "evictions", "total_loads")
    } == {
        "cache_size": 1,
        "cached_models": 1,
        "cache_hits": 1,
        "cache_misses": 2,
        "evictions": 1,
        "total_loads": 2,
    }
    assert stats["hit_rate"] == pytest.approx(1 / 3, abs=1e-5)
    assert stats["miss_rate"] == pytest.approx(2 / 3, abs=1e-5)
    assert stats["models"][0]["model_type"] == "b"
    entry = stats["models"][0]
    assert entry["size_bytes"] == registry.metadata("b", "1.0").size_bytes > 0
    # The budget charges resident memory: for a UBJ model 1.5x the file plus a fixed overhead.
    assert stats["cache_bytes"] == entry["resident_bytes"] > entry["size_bytes"]


# -- filesystems fail (issue 8 section 2) and the on-demand load bound ---------
def _metadata_path(registry: Registry, model_type: str, version: str) -> Path:
    return registry.root / model_type / version / "metadata.json"


@pytest.mark.parametrize("breakage", ["invalid json", "size_bytes true", "directory", "symlink"])
def test_unusable_metadata_on_the_default_falls_back(
    registry: Registry, publish: PublishFn, breakage: str
) -> None:
    publish("m", "1.0.0")
    publish("m", "1.1.0")
    path = _metadata_path(registry, "m", "1.1.0")
    if breakage == "invalid json":
        path.write_text("{not json")
    elif breakage == "size_bytes true":
        path.write_text(json.dumps({**json.loads(path.read_text()), "size_bytes": True}))
    elif breakage == "directory":  # an OSError on read, from real file state
        path.unlink()
        path.mkdir()
    else:
        path.rename(path.with_name("real.json"))
        path.symlink_to("real.json")
    parts = make_node(registry)
    resolved = get(parts, "m")
    assert (resolved.version, resolved.fallback_from) == ("1.0.0", "1.1.0")
    assert sample(parts, "modelcache_fallbacks_total", model_type="m") == 1


def test_default_version_removed_while_serving_falls_back(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0.0")
    publish("m", "1.1.0")
    parts = make_node(registry)
    assert get(parts, "m").version == "1.1.0"
    parts.loads.unload("m")
    shutil.rmtree(registry.root / "m" / "1.1.0")
    resolved = get(parts, "m")
    assert (resolved.version, resolved.fallback_from) == ("1.0.0", "1.1.0")


def test_a_fifo_in_place_of_the_artifact_is_refused_at_once(registry: Registry, publish: PublishFn) -> None:
    """Opening a FIFO blocks until a writer comes: planted in the registry it must not wedge loads."""
    publish("m", "1.0")
    path = registry.artifact_path(publish("m", "1.1"))
    path.unlink()
    os.mkfifo(path)
    parts = make_node(registry, load_timeout_s=30)
    resolved = get(parts, "m")
    assert (resolved.version, resolved.fallback_from) == ("1.0", "1.1")
    assert sample(parts, "modelcache_model_load_failures_total", model_type="m", reason="io") == 1
    # The worker leaves the pool's in-progress list just after the caller has its answer.
    assert eventually(lambda: sample(parts, "modelcache_loads_in_progress") == 0, 10)
    assert parts.loads.health() == []


def test_a_hung_read_times_out_and_does_not_starve_other_loads(
    registry: Registry, publish: PublishFn, hung_reads: HungReads
) -> None:
    publish("hung", "1.0")
    hung_reads.hang("hung", "1.0")
    publish("ok", "1.0")
    # 2 s, not less: the healthy model's load must fit in it on a loaded 2-core machine
    # (at 0.5 s it timed out at load average 8).
    parts = make_node(registry, load_timeout_s=2, load_workers=2)
    # The read hangs until the test ends: getting this answer at all is the load timeout at work.
    with pytest.raises(ModelLoadError, match="longer than 2s"):
        get(parts, "hung")
    assert sample(parts, "modelcache_loads_in_progress") == 1  # still stuck in its read
    assert sample(parts, "modelcache_model_load_failures_total", model_type="hung", reason="timeout") == 1
    # Other models load on the remaining worker; metadata does not use the pool at all.
    assert get(parts, "ok").version == "1.0"
    assert asyncio.run(asyncio.to_thread(registry.metadata, "hung", "1.0")).version == "1.0"
    # Reloads are bounded too: the outcome says so instead of hanging the reconcile loop.
    [outcome] = parts.reloads.reload("hung", "1.0")
    assert outcome.outcome == "failed" and "longer than 2s" in outcome.detail
    [problem] = parts.loads.health()
    assert problem.startswith("2 load(s) stuck longer than 2s: hung 1.0 (")
    # The pool is the bound: with every worker stuck, a further load waits and times out
    # (the node still serves cache hits), and the health check says why.
    publish("late", "1.0")
    with pytest.raises(ModelLoadError, match="longer than"):
        get(parts, "late")
    assert get(parts, "ok").cached
    assert parts.loads.health()[1] == "all 2 load workers busy (MODELCACHE_LOAD_WORKERS), 1 load(s) waiting"


def test_load_health_is_empty_when_loads_finish(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    parts = make_node(registry, load_timeout_s=5)
    get(parts, "m")
    assert parts.loads.health() == []
    # The request wakes as the model lands; the pool thread finishes its bookkeeping just after.
    assert eventually(lambda: sample(parts, "modelcache_loads_in_progress") == 0, timeout=2)


def test_ondemand_loads_of_non_default_versions_are_bounded(registry: Registry, publish: PublishFn) -> None:
    for v in ("1.0", "2.0", "3.0", "4.0"):
        publish("m", v)
    now = [1000.0]
    parts = make_node(registry, cache_size=1, ondemand_loads_per_min=2, clock=lambda: now[0])
    assert get(parts, "m", "1.0").version == "1.0"
    assert get(parts, "m", "2.0").version == "2.0"
    with pytest.raises(LoadRateLimited) as info:
        get(parts, "m", "3.0")
    assert info.value.code == "too_many_loads" and info.value.retry_after_s == 30
    assert "MODELCACHE_ONDEMAND_LOADS_PER_MIN" in str(info.value)
    assert get(parts, "m", "2.0").cached  # a hit of any version is never limited
    assert get(parts, "m").version == "4.0"  # nor a load of the default...
    assert get(parts, "m", "4.0").cached is True  # ...named explicitly (evicting 2.0 on the way)
    assert get(make_node(registry, pins={"m": "1.0"}, ondemand_loads_per_min=1), "m", "1.0").version
    assert asyncio.run(parts.service.get("m", "3.0", limit_loads=False)).version == "3.0"  # internal routing
    now[0] += 30  # one token back at 2 per minute
    assert get(parts, "m", "1.0").version == "1.0"
    with pytest.raises(LoadRateLimited):
        get(parts, "m", "2.0")


def test_list_models_goes_on_past_an_unreadable_model_type(
    registry: Registry, publish: PublishFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Monkeypatched os.scandir: as root, no file mode makes listing a directory fail."""
    publish("a", "1.0")
    publish("b", "1.0")
    real_scandir = os.scandir
    denied = registry.root / "b"

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = {m["model_type"]: m for m in models_view(registry.scan(), {}, {}, {})}
    assert listing["a"]["versions"] == ["1.0"] and "error" not in listing["a"]
    assert listing["b"]["versions"] == [] and "Permission denied" in listing["b"]["error"]
    assert str(registry.root) not in listing["b"]["error"]


def test_lfu_keeps_two_hot_models_through_a_scan(registry: Registry, publish: PublishFn) -> None:
    for mt in ("h1", "h2", "x1", "x2", "x3", "x4"):
        publish(mt, "1.0")
    for policy, survives in (("lfu", True), ("lru", False)):
        parts = make_node(registry, cache_size=3, cache_policy=policy)
        for _ in range(30):
            get(parts, "h1")
            get(parts, "h2")
        for one_off in ("x1", "x2", "x3", "x4"):
            get(parts, one_off)
        cached = set(parts.loads.cached_versions())
        assert ({"h1", "h2"} <= cached) is survives, (policy, cached)


def test_idle_model_is_gone_from_stats_after_the_ttl(registry: Registry, publish: PublishFn) -> None:
    publish("a", "1.0")
    publish("b", "1.0")
    now = [0.0]
    parts = make_node(registry, cache_idle_ttl_s=2.0, clock=lambda: now[0], sweep=False)
    get(parts, "a")
    get(parts, "b")
    now[0] = 1.0
    get(parts, "b")  # b used again; a is not
    now[0] = 2.5
    get(parts, "b")  # the access path drops a (unused 2.5 s > 2 s)
    assert [m["model_type"] for m in parts.loads.stats()["models"]] == ["b"]
    now[0] = 5.0
    parts.loads.sweep()  # what the periodic sweep runs: b unused 2.5 s
    stats = parts.loads.stats()
    assert stats["models"] == [] and stats["evictions_by_reason"] == {"idle": 2}


def test_the_sweep_thread_expires_without_any_request(registry: Registry, publish: PublishFn) -> None:
    publish("a", "1.0")
    parts = make_node(registry, cache_idle_ttl_s=0.2)
    try:
        get(parts, "a")
        assert parts.loads.sweeper is not None
        assert eventually(lambda: parts.loads.stats()["models"] == [], timeout=10)
        assert parts.loads.health() == []
    finally:
        parts.close()


def test_a_failing_sweep_is_logged_counted_and_reported_not_fatal(registry: Registry) -> None:
    now = [0.0]
    parts = make_node(registry, cache_idle_ttl_s=1.0, clock=lambda: now[0], sweep=False)
    from node.periodic import Periodic

    def broken() -> None:
        raise OSError("boom")

    sweeper = Periodic("cache-sweep", broken, 1.0, parts.metrics.background_errors, clock=lambda: now[0])
    parts.loads.sweeper = sweeper
    assert sweeper.run_once() is False  # caught, not raised
    now[0] = 5.0
    assert any("cache-sweep failing" in p for p in parts.loads.health())
    assert sample(parts, "modelcache_background_errors_total", thread="cache-sweep") == 1


def test_a_reload_ends_a_canary_whose_version_left_the_registry(
    registry: Registry, publish: PublishFn
) -> None:
    publish("m", "1.0")
    publish("m", "1.1")
    parts = make_node(registry)
    assert get(parts, "m").version == "1.1"
    assert parts.reloads.set_canary("m", "1.0", 50).outcome == "ok"
    shutil.rmtree(registry.root / "m" / "1.0")
    [outcome] = parts.reloads.reload("m")
    assert outcome.outcome == "failed" and "canary 1.0 ended" in outcome.detail, outcome
    assert parts.reloads.canaries() == {}
    assert {get(parts, "m").version for _ in range(20)} == {"1.1"}
