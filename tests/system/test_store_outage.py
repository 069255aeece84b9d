"""A real node on an `s3://` registry while its store (a real S3-compatible server) dies and returns.

Cached models, in memory and on the disk tier, keep serving and /readyz stays 200;
a load that needs the store fails within seconds with a 503 naming the store; a
cached model costs no store call per prediction; everything recovers when the
store is back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.registry import open_registry
from testkit.s3_server import BUCKET, S3Server, create_bucket
from tests.helpers import NodeProcess, metric, train_booster

ROW = [0.1, 0.2, 0.3, 0.4]
REGISTRY = f"s3://{BUCKET}/reg"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "moto.log").start()
    create_bucket(server.url)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def _publish(tmp_path: Path, model_type: str, seed: int) -> None:
    path = tmp_path / f"{model_type}.ubj"
    train_booster(seed).save_model(path)
    open_registry(REGISTRY).publish(path, model_type, "1.0.0", features=("f0", "f1", "f2", "f3"))


def _store_requests(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelcache_store_requests_total"
    )


def test_store_outage_fails_no_request_for_a_cached_model(
    tmp_path: Path, store: S3Server, node_process: Callable[..., NodeProcess]
) -> None:
    for i, model_type in enumerate(("a", "b", "c")):
        _publish(tmp_path, model_type, i)
    node = node_process(
        REGISTRY,  # type: ignore[arg-type]
        MODELCACHE_CACHE_SIZE="1",
        MODELCACHE_LOCAL_CACHE_DIR=str(tmp_path / "tier"),
        MODELCACHE_LOAD_RETRIES="2",
        MODELCACHE_LOAD_FAILURE_TTL_S="0",
        MODELCACHE_STORE_TIMEOUT_S="2",
        **{k: os.environ[k] for k in store.env()},
    )

    def predict(model_type: str) -> httpx.Response:
        body = {"model_type": model_type, "features": ROW}
        return httpx.post(f"{node.url}/api/v1/predict", json=body, timeout=30)

    assert predict("a").status_code == 200  # from the store, kept on the disk tier
    assert predict("b").status_code == 200  # evicts a from memory (one slot)
    before = _store_requests(node.url)
    for _ in range(20):
        assert predict("b").status_code == 200
    assert _store_requests(node.url) == before  # no store call per prediction

    store.kill()
    assert predict("b").status_code == 200  # in memory
    again = predict("a")  # evicted from memory: reloads from the disk tier, not the store
    assert again.status_code == 200 and again.json()["cached"] is False
    assert httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200
    started = time.monotonic()
    needs_store = predict("c")
    assert time.monotonic() - started < 15  # fails within seconds, never hangs
    assert needs_store.status_code == 503
    message = needs_store.json()["error"]
    assert "object store" in message and f"127.0.0.1:{store.port}" in message  # names the store
    assert (metric(node.url, "modelcache_disk_tier_hits_total") or 0) >= 1
    assert (metric(node.url, "modelcache_store_requests_total", operation="get", outcome="error") or 0) >= 1
    for _ in range(10):
        assert predict("a").status_code == 200  # the outage fails no request for a cached model

    store.start()  # back on the same address (moto keeps nothing: publish c again)
    create_bucket(store.url)
    _publish(tmp_path, "c", 2)
    assert predict("c").status_code == 200
    assert (metric(node.url, "modelcache_store_bytes_total", direction="download") or 0) > 0
