"""Operations routes (node.http.ops): liveness and readiness."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from coordinator.registry import Registry
from node.app import build_app, build_node
from node.http.app import create_app
from node.metrics import NodeMetrics
from node.settings import NodeSettings
from tests.helpers import HungReads, NodeProcess, PublishFn, eventually, metric, write_slow_model
from tests.node.http.support import ROW


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200


def test_readyz_waits_for_warmup(registry: Registry, publish: PublishFn) -> None:
    import dataclasses
    import threading

    publish("churn", "1.0.0")
    settings = NodeSettings(registry=registry.root)
    parts = build_node(settings)
    release = threading.Event()

    def warmup() -> list[str]:
        release.wait(10)
        return parts.service.warm(["churn"])

    with TestClient(create_app(settings, dataclasses.replace(parts, warmup=warmup))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "not_ready"
        release.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert c.get("/readyz").status_code == 200
        assert c.get("/api/v1/cache/stats").json()["cached_models"] == 1


def test_readyz_says_when_loading_is_wedged_and_stays_ready(
    registry: Registry, publish: PublishFn, hung_reads: HungReads
) -> None:
    publish("hung", "1.0")
    hung_reads.hang("hung", "1.0")
    settings = NodeSettings(registry=registry.root, load_timeout_s=0.3, load_workers=1, load_retries=1)
    with TestClient(build_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/api/v1/predict", json={"model_type": "hung", "features": ROW})
        assert r.status_code == 503 and "longer than 0.3s" in r.json()["error"]
        # Cached models still answer: degraded, listed in the body and the metric, still ready.
        ready = c.get("/readyz")
        assert ready.status_code == 200 and "stuck" in ready.json()["degraded"][0]
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/healthz").status_code == 200
        assert "modelcache_degraded 1.0" in c.get("/metrics").text
        hung_reads.release.set()


def test_a_failing_warm_up_still_ends_ready(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    settings = NodeSettings(registry=registry.root)
    metrics = NodeMetrics(CollectorRegistry())

    def warmup() -> list[str]:
        raise RuntimeError("cluster state unreadable")

    app = create_app(settings, replace(build_node(settings, metrics), warmup=warmup))
    with TestClient(app) as c:
        assert eventually(lambda: c.get("/readyz").status_code == 200, timeout=5)
        assert c.post("/api/v1/predict", json={"model_type": "m", "features": ROW}).is_success


def test_readyz_lists_cluster_sync_problems_and_stays_ready(registry: Registry, publish: PublishFn) -> None:
    """The wiring only: node/sync's own tests provoke a sync thread that keeps failing."""
    publish("m", "1.0")
    settings = NodeSettings(registry=registry.root)
    metrics = NodeMetrics(CollectorRegistry())

    class FailingSync:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        def problems(self) -> list[str]:
            return ["loop: 3 errors in a row, last: boom"]

    app = create_app(settings, replace(build_node(settings, metrics), sync=FailingSync()))
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["degraded"] == ["loop: 3 errors in a row, last: boom"]
        assert c.post("/api/v1/predict", json={"model_type": "m", "features": ROW}).is_success


def test_a_model_idle_past_the_ttl_is_gone_from_cache_stats(registry: Registry, publish: PublishFn) -> None:
    """Real time and the real sweep thread: TTL 2 s, the model unused for 5 s."""
    publish("m", "1.0")
    publish("n", "1.0")
    settings = NodeSettings(registry=registry.root, cache_idle_ttl_s=2.0)
    with TestClient(build_app(settings)) as c:
        for model_type in ("m", "n"):
            assert c.post(f"/api/v1/models/{model_type}/predict", json={"features": ROW}).is_success
        cached = {e["model_type"] for e in c.get("/api/v1/cache/stats").json()["models"]}
        assert cached == {"m", "n"}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # keep n in use; leave m idle
            assert c.post("/api/v1/models/n/predict", json={"features": ROW}).is_success
            time.sleep(0.5)
        stats = c.get("/api/v1/cache/stats").json()
        assert {e["model_type"] for e in stats["models"]} == {"n"}
        assert stats["evictions_by_reason"] == {"idle": 1}


def test_a_burst_of_cold_models_leaves_the_node_in_rotation(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """Six slow cold models at once on one load worker: loads queue, the cached model answers,
    and /readyz stays 200 and says so (before, it was 503 while any load waited)."""
    publish("warm", "1.0")
    write_slow_model(tmp_path / "slow.json", n_trees=400)
    cold = [f"cold{i}" for i in range(6)]
    for name in cold:
        registry.publish(tmp_path / "slow.json", name, "1.0")
    node = node_process(registry.root, MODELCACHE_LOAD_WORKERS="1", MODELCACHE_LOAD_TIMEOUT_S="120")
    predict = f"{node.url}/api/v1/predict"
    with httpx.Client(timeout=120) as c, ThreadPoolExecutor(len(cold)) as pool:
        assert c.post(predict, json={"model_type": "warm", "features": ROW}).status_code == 200
        burst = [pool.submit(c.post, predict, json={"model_type": m, "features": ROW}) for m in cold]

        def backlogged() -> bool:
            ready = c.get(f"{node.url}/readyz")
            assert ready.status_code == 200, ready.text
            return any("waiting" in p for p in ready.json().get("degraded", []))

        assert eventually(backlogged, timeout=30)
        assert metric(node.url, "modelcache_degraded") == 1
        warm = c.post(predict, json={"model_type": "warm", "features": ROW})
        assert warm.status_code == 200 and warm.json()["cached"] is True
        assert [f.result().status_code for f in burst] == [200] * len(cold)
        assert eventually(lambda: "degraded" not in c.get(f"{node.url}/readyz").json())
