"""/metrics after a known sequence of requests carries exactly the expected values."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from coordinator.registry import Registry
from node import memory
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import NodeProcess, PublishFn, corrupt

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


# -- series that follow the cache ------------------------------------------------------------


def series_by_model_type(text: str) -> dict[str, int]:
    """Per-model sample count on a /metrics page, by model type (the cached-model table aside)."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "modelcache_cached_model_info":
            continue
        for s in family.samples:
            if "model_type" in s.labels:
                counts[s.labels["model_type"]] = counts.get(s.labels["model_type"], 0) + 1
    return counts


def test_model_series_keep_the_cached_types_and_the_last_departed() -> None:
    """The queue: departed types go oldest first once more than `retain` are queued."""
    from node.metrics import NodeMetrics

    metrics = NodeMetrics()
    cached = {"a", "b"}
    metrics.cache_capacity_models.set(2)
    metrics.track_cached(lambda: [(mt, "1.0") for mt in sorted(cached)])
    assert metrics.model_series is not None
    for mt in "abcdef":
        metrics.cache_hits.labels(mt).inc()
        metrics.observe_batch_rows(mt, 4)
    # c..f have series without being cached (say, loads that failed): queued, two kept.
    assert metrics.model_series.prune() == ["c", "d"]
    assert metrics.model_series.departed() == ["e", "f"]
    cached.discard("a")
    metrics.evicted("a", "capacity")  # a departs last: e, the oldest, goes
    assert metrics.model_series.departed() == ["f", "a"]
    assert (
        metrics.registry.get_sample_value(
            "modelcache_cache_evictions_total", {"model_type": "a", "reason": "capacity"}
        )
        == 1
    )
    present = metrics.model_series.present()
    assert present == {"a", "b", "f"}
    # A type cached again leaves the queue and keeps its series.
    cached.add("f")
    assert metrics.model_series.prune() == []
    assert metrics.model_series.departed() == ["a"]
    # A dropped type's batch histogram comes back when it is served again (no orphaned child).
    metrics.observe_batch_rows("c", 8)
    assert metrics.registry.get_sample_value("modelcache_batch_rows_count", {"model_type": "c"}) == 1


def test_per_model_series_are_bounded_by_the_cache_on_a_real_node(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    """Serve 12 model types through a cache of 3: /metrics keeps at most 3 cached + 3 departed types."""
    types = [f"m{i:02d}" for i in range(12)]
    for mt in types:
        publish(mt, "1.0")
    node = node_process(registry.root, MODELCACHE_CACHE_SIZE="3")
    with httpx.Client(base_url=node.url, timeout=30) as client:
        for mt in types:
            for _ in range(2):
                r = client.post(f"/api/v1/models/{mt}/predict", json={"features": ROW})
                assert r.status_code == 200, r.text
        text = client.get("/metrics").text
    per_model = series_by_model_type(text)
    assert len(per_model) <= 6, per_model
    assert set(types[-3:]) <= set(per_model)  # the cached ones
    assert not set(types[:6]) & set(per_model)  # long gone: no series left behind
    # A served type carries its hits, misses, load histogram, predictions and batch rows.
    assert per_model[types[-1]] >= 20
    # `_created` series are off: 10 families fewer, per label set.
    assert "_created" not in text


def test_every_modelcache_family_is_in_the_readme_table_and_back(
    registry: Registry, publish: PublishFn
) -> None:
    """The README's metrics table lists exactly the families /metrics exports, with their labels."""
    publish("a", "1.0")
    settings = NodeSettings(registry=registry.root, cache_size=2, admin_token="t")
    with TestClient(build_app(settings)) as client:
        assert client.post("/api/v1/models/a/predict", json={"features": ROW}).status_code == 200
        client.post("/api/v1/models/a/predict", json={"features": ROW[:2]})  # a prediction error
        text = client.get("/metrics").text
    exported = dict(re.findall(r"^# TYPE (modelcache_\w+) (\w+)$", text, re.M))
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = family.name + "_total" if family.type == "counter" else family.name
            labels.setdefault(name, set()).update(k for k in s.labels if k != "le")
    documented = readme_metrics()
    assert set(documented) == set(exported), "update the README's metrics table"
    for name, (kind, names) in documented.items():
        if name in exported:
            assert kind == exported[name], f"{name}: README says {kind}, /metrics says {exported[name]}"
        if name in labels:
            assert names == labels[name], f"{name}: README lists {names}, /metrics has {labels[name]}"


def readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """README "## Metrics" table: name -> (type, label names)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`modelcache_"):
            continue
        kind = cells[1].split()[0]
        names = label_names(cells[2])
        for name in re.findall(r"`(modelcache_\w+)`", cells[0]):
            rows[name] = (kind, names)
    return rows


def label_names(cell: str) -> set[str]:
    """`model_type`, `reason` (`capacity`, ...) -> {model_type, reason}: names outside parentheses."""
    return set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cell)))
