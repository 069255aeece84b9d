"""Redis reachable but refusing writes (maxmemory 1, noeviction): every node stays in rotation.

Real redis-server, two real node processes and HAProxy health-checking /readyz. Before,
every node's /readyz turned 503 within seconds, HAProxy had no server left, the sync loop
spun on the refusals (tracebacks by the megabyte) and a pin answered cluster_state_corrupt.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from coordinator.haproxy_process import INSTALL, HAProxy
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, eventually, free_port, metric, require_binary

ROW = {"features": [0.1, 0.2, 0.3, 0.4]}
ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """This test's own redis-server: its memory limit must not reach other tests."""
    with RedisServer() as server:
        yield server


def degraded(node: NodeProcess) -> list[str]:
    r = httpx.get(f"{node.url}/readyz", timeout=5)
    assert r.status_code == 200, r.text  # the node can answer predictions: it stays in rotation
    return r.json().get("degraded", [])


@pytest.mark.slow
def test_redis_refusing_writes_leaves_every_node_serving_and_says_why(
    cluster: Callable[..., list[NodeProcess]],
    publish: PublishFn,
    own_redis: RedisServer,
    registry: Registry,
    prefix: str,
) -> None:
    require_binary("haproxy", INSTALL)
    publish("m", "1.0")
    nodes = cluster(2, redis_url=own_redis.url)
    lb = HAProxy([f"127.0.0.1:{n.port}" for n in nodes], free_port()).start()
    admin = redis.Redis.from_url(own_redis.url)
    try:
        assert httpx.post(f"{lb.url}/api/v1/models/m/predict", json=ROW, timeout=30).status_code == 200
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)

        for node in nodes:  # each node sees it, says it, counts it, and is still ready
            assert eventually(lambda n=node: metric(n.url, "modelcache_redis_refusing") == 1, timeout=15)
            assert any("out of memory" in p for p in degraded(node)), degraded(node)
            assert metric(node.url, "modelcache_redis_refusals_total", reason="oom")
            assert metric(node.url, "modelcache_degraded") == 1
        log_sizes = [n.log.stat().st_size for n in nodes]
        refusals = [metric(n.url, "modelcache_redis_refusals_total", reason="oom") or 0 for n in nodes]

        # Several HAProxy check intervals: no node leaves rotation, no prediction fails.
        deadline = time.monotonic() + 6
        answers = []
        while time.monotonic() < deadline and len(answers) < 200:
            answers.append(httpx.post(f"{lb.url}/api/v1/models/m/predict", json=ROW, timeout=30).status_code)
            assert all(degraded(n) for n in nodes)
            time.sleep(0.05)
        assert set(answers) == {200}, answers

        # Backed off, not spinning: a handful of retries and log lines, not thousands.
        for node, before, count in zip(nodes, log_sizes, refusals, strict=True):
            retried = (metric(node.url, "modelcache_redis_refusals_total", reason="oom") or 0) - count
            assert retried < 30, retried
            assert node.log.stat().st_size - before < 20_000

        pin = httpx.put(f"{nodes[0].url}/api/v1/pins/m", json={"version": "1.0"}, headers=ADMIN, timeout=30)
        assert pin.status_code == 503, pin.text
        assert pin.json()["code"] == "cluster_unavailable" and "out of memory" in pin.json()["error"]
        where = ["--registry", str(registry.root), "--redis-url", own_redis.url, "--redis-prefix", prefix]
        cli = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "pin", "m", "1.0", *where],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 3 and "out of memory" in cli.stderr, (cli.returncode, cli.stderr)

        admin.config_set("maxmemory", 0)  # Redis accepts writes again: the nodes notice
        for node in nodes:
            assert eventually(lambda n=node: metric(n.url, "modelcache_redis_refusing") == 0, timeout=15)
            assert eventually(lambda n=node: degraded(n) == [], timeout=10)
        pin = httpx.put(f"{nodes[0].url}/api/v1/pins/m", json={"version": "1.0"}, headers=ADMIN, timeout=30)
        assert pin.status_code == 200, pin.text
    finally:
        admin.config_set("maxmemory", 0)
        lb.stop()
