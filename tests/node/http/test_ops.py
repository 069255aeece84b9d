"""Operations routes (node.http.ops): liveness and readiness."""

from __future__ import annotations

import time
from dataclasses import replace

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from coordinator.registry import Registry
from node.app import build_app, build_node
from node.http.app import create_app
from node.metrics import NodeMetrics
from node.settings import NodeSettings
from tests.helpers import HungReads, PublishFn, eventually
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


def test_readyz_says_when_loading_is_wedged(
    registry: Registry, publish: PublishFn, hung_reads: HungReads
) -> None:
    publish("hung", "1.0")
    hung_reads.hang("hung", "1.0")
    settings = NodeSettings(registry=registry.root, load_timeout_s=0.3, load_workers=1, load_retries=1)
    with TestClient(build_app(settings)) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/api/v1/predict", json={"model_type": "hung", "features": ROW})
        assert r.status_code == 503 and "longer than 0.3s" in r.json()["error"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "stuck" in ready.json()["error"]
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, just not ready
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


def test_readyz_reports_cluster_sync_problems(registry: Registry, publish: PublishFn) -> None:
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
        assert r.status_code == 503 and "loop: 3 errors in a row" in r.json()["error"]
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
