"""/metrics after a known sequence of requests carries exactly the expected values."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from coordinator.registry import Registry
from node import memory
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn, corrupt

ROW = [0.1, 0.2, 0.3, 0.4]
BINDING_NAMES = {
    "modelcache_cache_hits",
    "modelcache_cache_misses",
    "modelcache_cache_evictions",
    "modelcache_model_load_seconds",
    "modelcache_model_load_failures",
    "modelcache_cached_models",
    "modelcache_cache_capacity_models",
    "modelcache_cache_bytes",
    "modelcache_predict_seconds",
    "modelcache_predictions",
    "modelcache_reloads",
    "modelcache_reload_propagation_seconds",
    "modelcache_fallbacks",
    "modelcache_redis_connected",
}


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_a_known_sequence(registry: Registry, publish: PublishFn) -> None:
    for mt in ("a", "b", "c"):
        publish(mt, "1.0")
    publish("c", "0.9")
    corrupt(registry, registry.metadata("c", "1.0"))
    settings = NodeSettings(registry=registry.root, cache_size=2, load_retries=1, admin_token="t")
    with TestClient(build_app(settings)) as client:
        families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families >= BINDING_NAMES

        def predict(mt: str) -> None:
            assert client.post("/api/v1/predict", json={"model_type": mt, "features": ROW}).status_code == 200

        predict("a")  # miss, load a
        predict("a")  # hit
        predict("b")  # miss, load b
        predict("a")  # hit
        predict("c")  # miss: c 1.0 fails the checksum, falls back to c 0.9 (miss, load), evicts b
        r = client.post("/api/v1/batch_predict", json={"model_type": "a", "instances": [ROW] * 3})
        assert r.status_code == 200  # hit, 3 rows
        client.post(
            "/api/v1/models/reload",
            json={"scope": "node", "model_type": "a"},
            headers={"Authorization": "Bearer t"},
        )
        s = scrape(client)

    assert value(s, "modelcache_cache_hits_total", model_type="a") == 3
    assert value(s, "modelcache_cache_misses_total", model_type="a") == 1
    assert value(s, "modelcache_cache_misses_total", model_type="b") == 1
    assert value(s, "modelcache_cache_misses_total", model_type="c") == 2
    assert value(s, "modelcache_cache_evictions_total", model_type="b", reason="capacity") == 1
    assert value(s, "modelcache_model_load_seconds_count", model_type="a") == 2  # first load + reload
    assert value(s, "modelcache_model_load_seconds_count", model_type="c") == 1
    assert value(s, "modelcache_model_load_failures_total", model_type="c", reason="checksum") == 1
    assert value(s, "modelcache_fallbacks_total", model_type="c") == 1
    assert value(s, "modelcache_cached_models") == 2
    assert value(s, "modelcache_cache_capacity_models") == 2
    assert value(s, "modelcache_cache_bytes") == sum(
        memory.estimate_cost(registry.metadata(mt, v)) for mt, v in (("a", "1.0"), ("c", "0.9"))
    )  # resident cost: a UBJ model is charged 1.5x its file plus the per-model overhead
    assert value(s, "process_resident_memory_bytes") > 0
    # Per version (bounded: only versions that answered), so a canary can be told from the stable.
    assert value(s, "modelcache_predictions_total", model_type="a", version="1.0") == 6
    assert value(s, "modelcache_predict_seconds_count", model_type="a", version="1.0") == 4
    assert value(s, "modelcache_predictions_total", model_type="c", version="0.9") == 1
    assert value(s, "modelcache_reloads_total", source="api", outcome="ok") == 1
    assert value(s, "modelcache_served_version_info", model_type="c", version="1.0") == 1
    assert value(s, "modelcache_redis_connected") == 0
    cached = {k[1] for k in s if k[0] == "modelcache_cached_model_info"}
    assert cached == {(("model_type", "a"), ("version", "1.0")), (("model_type", "c"), ("version", "0.9"))}


def test_evictions_carry_their_reason(registry: Registry, publish: PublishFn) -> None:
    """bytes, idle and unload each land under their own `reason` label (capacity: the test above)."""
    from tests.node.parts import make_node

    for mt in ("a", "b", "c"):
        publish(mt, "1.0")
    now = [0.0]
    size = memory.estimate_cost(registry.metadata("a", "1.0"))
    parts = make_node(
        registry,
        cache_size=3,
        cache_max_bytes=2 * size + 1,
        cache_idle_ttl_s=10,
        clock=lambda: now[0],
        sweep=False,
    )
    metrics = parts.metrics
    parts.service.load("a")
    parts.service.load("b")
    parts.service.load("c")  # three slots but bytes for two: a goes for bytes
    assert parts.loads.unload("c") == ["1.0"]
    now[0] = 20.0
    parts.loads.sweep()  # b idle for 20 s > 10 s

    def reason(mt: str, why: str) -> float | None:
        return metrics.registry.get_sample_value(
            "modelcache_cache_evictions_total", {"model_type": mt, "reason": why}
        )

    assert reason("a", "bytes") == 1
    assert reason("c", "unload") == 1
    assert reason("b", "idle") == 1
    assert parts.loads.cached_versions() == {}
