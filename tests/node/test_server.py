"""A real node process (uvicorn on loopback), driven over real HTTP."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from coordinator.registry import Registry
from tests.helpers import NodeProcess, PublishFn, write_slow_model

ROW = [0.1, 0.2, 0.3, 0.4]
TOKEN = "test-token"
JSON = {"Content-Type": "application/json"}


def predict(client: httpx.Client, url: str, model_type: str, **extra) -> httpx.Response:
    return client.post(f"{url}/api/v1/predict", json={"model_type": model_type, "features": ROW, **extra})


def test_real_node_serves_and_limits(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    publish("a", "1.0")
    node = node_process(registry.root, MODELCACHE_MAX_BODY_BYTES="2048")
    with httpx.Client(timeout=10) as c:
        r = predict(c, node.url, "a")
        assert r.status_code == 200 and r.json()["version"] == "1.0"
        assert r.json()["node_id"] == f"node-{node.port}"
        big = c.post(f"{node.url}/api/v1/predict", json={"model_type": "a", "features": [0.5] * 1000})
        assert big.status_code == 413 and big.json()["code"] == "body_too_large"
        assert "modelcache_cache_misses_total" in c.get(f"{node.url}/metrics").text
        assert c.get(f"{node.url}/docs").status_code == 200


def test_hit_is_not_delayed_by_a_slow_load(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """Invariant 1 end to end: while B's load runs in the node, a request for cached A completes."""
    publish("a", "1.0")
    write_slow_model(tmp_path / "slow.json")
    registry.publish(tmp_path / "slow.json", "b", "1.0")
    node = node_process(registry.root)
    done: list[str] = []
    with httpx.Client(timeout=60) as c:
        assert predict(c, node.url, "a").status_code == 200  # A is cached
        misses_before = c.get(f"{node.url}/api/v1/cache/stats").json()["cache_misses"]

        def slow() -> None:
            with httpx.Client(timeout=60) as own:
                assert predict(own, node.url, "b").status_code == 200
            done.append("b")

        thread = threading.Thread(target=slow)
        thread.start()
        deadline = time.monotonic() + 10
        while c.get(f"{node.url}/api/v1/cache/stats").json()["cache_misses"] == misses_before:
            assert time.monotonic() < deadline, "B's load never started"
            time.sleep(0.005)
        # B's load is in progress now; A must be served regardless.
        for _ in range(3):
            r = predict(c, node.url, "a")
            assert r.status_code == 200 and r.json()["cached"] is True
            done.append("a")
        thread.join(60)
    assert done[:3] == ["a", "a", "a"] and done[3] == "b"


def test_reload_under_load_drops_no_request(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    """Invariant 2 end to end: concurrent requests during two reloads all succeed."""
    publish("m", "1.0.0")
    node = node_process(registry.root, MODELCACHE_ADMIN_TOKEN=TOKEN)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def client_loop() -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(400):  # bounded
                if stop.is_set():
                    return
                r = predict(c, node.url, "m")
                results.append((r.status_code, r.json().get("version", r.text)))

    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=30) as admin:
        assert predict(admin, node.url, "m").json()["version"] == "1.0.0"
        futures = [pool.submit(client_loop) for _ in range(4)]
        time.sleep(0.2)
        for version in ("1.1.0", "1.2.0"):
            publish("m", version, rounds=40)
            r = admin.post(
                f"{node.url}/api/v1/models/reload",
                json={"model_type": "m", "scope": "node"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.json()["acks"][0]["outcome"] == "ok" and r.json()["acks"][0]["version"] == version
            time.sleep(0.2)
        stop.set()
        for f in futures:
            f.result(30)
        after = predict(admin, node.url, "m").json()

    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    assert {v for _, v in results} <= {"1.0.0", "1.1.0", "1.2.0"}
    assert after["version"] == "1.2.0" and after["cached"] is True


def test_sigterm_stops_the_node_cleanly(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    publish("a", "1.0")
    node = node_process(registry.root)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal as its exit status.
    assert node.proc.wait(15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in node.log.read_text()


def test_over_limit_batches_do_not_stall_healthz(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    """While three clients send ~1 MB over-limit batches, /healthz keeps answering.

    No absolute times: the median healthz latency during the flood is compared to the
    same client's median before it, with a generous ratio (here ~13x with the fix, ~130x without).
    """
    import statistics

    publish("a", "1.0")
    node = node_process(registry.root, MODELCACHE_MAX_BODY_BYTES=str(2 << 20), MODELCACHE_MAX_BATCH="100")
    big = b'{"model_type": "a", "instances": [' + b",".join([b"[0.123456, 1.5, 2.25, 3.0]"] * 36000) + b"]}"
    assert 900_000 < len(big) < 2 << 20

    def healthz_latencies(c: httpx.Client, n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            assert c.get(f"{node.url}/healthz").status_code == 200
            out.append(time.perf_counter() - started)
        return out

    stop = threading.Event()
    rejected: list[int] = []

    def flood() -> None:
        with httpx.Client(timeout=30) as own:
            while not stop.is_set():
                r = own.post(f"{node.url}/api/v1/batch_predict", content=big, headers=JSON)
                rejected.append(r.status_code)

    with httpx.Client(timeout=30) as c:
        healthz_latencies(c, 20)  # warm the connection
        before = statistics.median(healthz_latencies(c, 60))
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(flood) for _ in range(3)]
            while len(rejected) < 3:
                time.sleep(0.01)
            during = statistics.median(healthz_latencies(c, 60))
            stop.set()
            for f in futures:
                f.result(60)
    assert rejected and set(rejected) == {413}
    assert during < 50 * before, (before, during)  # ~13x here with the fix, ~130x without
