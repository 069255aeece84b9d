"""nginx in front of real nodes: cache affinity, failover, cluster calls and limits."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator.nginx import Nginx, render
from coordinator.registry import Registry
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, free_port, require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALL = "apt-get install nginx-light (Debian) or put nginx on PATH"
ROW = [0.1, 0.2, 0.3, 0.4]
Cluster = Callable[..., list[NodeProcess]]


@pytest.fixture
def balancer() -> Iterator[Callable[[list[NodeProcess]], Nginx]]:
    require_binary("nginx", INSTALL)
    started: list[Nginx] = []

    def _start(nodes: list[NodeProcess]) -> Nginx:
        lb = Nginx([f"127.0.0.1:{n.port}" for n in nodes], free_port(), max_body_bytes=1_048_576)
        started.append(lb)
        return lb.start()

    yield _start
    for lb in started:
        lb.stop()


def test_compose_config_is_rendered_from_the_template() -> None:
    assert (DEPLOY / "nginx" / "nginx.conf").read_text() == render(
        [f"node{i}:8000" for i in (1, 2, 3)], "8080", 1_048_576
    ), "run: python -m coordinator.nginx --compose > deploy/nginx/nginx.conf"


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    binary = require_binary("nginx", INSTALL)
    lb = Nginx(["127.0.0.1:1", "127.0.0.1:2"], free_port())
    try:
        out = subprocess.run(
            [binary, "-t", "-p", str(lb.run_dir), "-c", str(lb.conf), "-e", "/dev/stderr"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
    finally:
        lb.stop()


def stats_total(nodes: list[NodeProcess]) -> tuple[int, int]:
    hits = misses = 0
    for n in nodes:
        s = httpx.get(f"{n.url}/api/v1/cache/stats", timeout=5).json()
        hits, misses = hits + s["cache_hits"], misses + s["cache_misses"]
    return hits, misses


def run_workload(nodes: list[NodeProcess], urls: list[str], sequence: list[str], warmup: int) -> float:
    """Send `sequence` (round robin over `urls`); the hit rate after warm-up, from the nodes' stats."""
    with httpx.Client(timeout=30) as c:
        for i, model in enumerate(sequence):
            if i == warmup:
                before = stats_total(nodes)
            r = c.post(f"{urls[i % len(urls)]}/api/v1/models/{model}/predict", json={"features": ROW})
            assert r.status_code == 200, r.text
    hits, misses = (a - b for a, b in zip(stats_total(nodes), before, strict=True))
    return hits / (hits + misses)


def test_affinity_keeps_nine_models_hot_where_round_robin_thrashes(
    cluster: Cluster, balancer: Callable[[list[NodeProcess]], Nginx], publish: PublishFn, registry: Registry
) -> None:
    """3 nodes x 3 models: through nginx, 9 Zipf-popular models stay cached; round robin thrashes.

    The nine model names are picked by asking nginx where each candidate name goes, three
    per node: the claim under test is that consistent hashing keeps each model on its node,
    not that nine arbitrary names happen to hash evenly.
    """
    publish("probe", "1.0")
    nodes = cluster(3, MODELCACHE_CACHE_SIZE="3")
    lb = balancer(nodes)
    placed: dict[str, list[str]] = {f"node-{n.port}": [] for n in nodes}
    with httpx.Client(timeout=10) as c:
        for i in range(200):
            name = f"model-{i:03d}"
            r = c.get(f"{lb.url}/api/v1/models/{name}/versions/1.0")
            assert r.status_code == 404
            node = r.headers["x-modelcache-node"]
            assert c.get(f"{lb.url}/api/v1/models/{name}/versions/1.0").headers["x-modelcache-node"] == node
            if len(placed[node]) < 3:
                placed[node].append(name)
            if all(len(v) == 3 for v in placed.values()):
                break
    models = [m for names in placed.values() for m in names]
    assert len(models) == 9
    for m in models:
        publish(m, "1.0")

    rng = np.random.default_rng(42)
    order = list(rng.permutation(models))
    weights = 1 / np.arange(1, 10) ** 1.1
    sequence = [order[i] for i in rng.choice(9, size=1500, p=weights / weights.sum())]
    affinity = run_workload(nodes, [lb.url], sequence, warmup=300)
    round_robin = run_workload(nodes, [n.url for n in nodes], sequence, warmup=300)
    print(f"hit rate after warm-up: nginx affinity {affinity:.3f}, round robin {round_robin:.3f}")
    assert affinity >= 0.9
    assert round_robin < 0.75 and affinity - round_robin > 0.2


def test_cluster_reload_through_the_balancer_and_a_node_failure(
    cluster: Cluster, balancer: Callable[[list[NodeProcess]], Nginx], publish: PublishFn
) -> None:
    models = [f"m{i}" for i in range(6)]
    for m in models:
        publish(m, "1.0")
    nodes = cluster(3)
    lb = balancer(nodes)
    with httpx.Client(timeout=30) as c:
        for m in models:
            assert c.post(f"{lb.url}/api/v1/models/{m}/predict", json={"features": ROW}).status_code == 200
        for m in models:
            publish(m, "1.1")
        r = c.post(
            f"{lb.url}/api/v1/models/reload",
            json={"scope": "cluster", "wait": True},
            headers={"Authorization": f"Bearer {CLUSTER_TOKEN}"},
        )
        assert r.status_code == 200 and r.json()["ok"]
        assert sorted(a["node_id"] for a in r.json()["acks"]) == sorted(f"node-{n.port}" for n in nodes)
        assert {
            c.post(f"{lb.url}/api/v1/models/{m}/predict", json={"features": ROW}).json()["version"]
            for m in models
        } == {"1.1"}

        nodes[0].kill()
        codes, served_by = [], set()
        for _ in range(5):  # bounded: 30 requests
            for m in models:
                r = c.post(f"{lb.url}/api/v1/models/{m}/predict", json={"features": ROW})
                codes.append(r.status_code)
                served_by.add(r.headers.get("x-modelcache-node"))
        assert set(codes) == {200}
        assert f"node-{nodes[0].port}" not in served_by


def test_balancer_limits_body_size_like_the_nodes(
    cluster: Cluster, balancer: Callable[[list[NodeProcess]], Nginx], publish: PublishFn
) -> None:
    publish("m", "1.0")
    lb = balancer(cluster(1))
    r = httpx.post(
        f"{lb.url}/api/v1/models/m/predict",
        content=b"x" * 1_100_000,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    ok = httpx.post(f"{lb.url}/api/v1/models/m/predict", json={"features": ROW}, timeout=30)
    assert ok.status_code == 200
    v2 = httpx.get(f"{lb.url}/v2/models/m", timeout=30)
    assert v2.status_code == 200 and v2.json()["name"] == "m"
