"""The hash ring (today's HAProxy config alone) against placement (the same HAProxy with its agent).

    python benchmarks/bench_placement.py [--requests 3000] [--connections 32]

Three real nodes (MODELCACHE_CACHE_SIZE=3, the default LRU policy, default heartbeats), a
real Redis and a real HAProxy; models named model-000... as they come (no picking of names
that happen to hash well). For each routing, fresh nodes, a fresh HAProxy and a fresh key
prefix run three workloads side by side:

- hot:    7 models, one with 60% of the requests, at 32 connections (600 warm-up requests,
          then the measured ones): busiest node's share / mean, cluster hit rate, nodes
          caching the hot model, p50/p99 at the client;
- zipf9:  9 models (they fit 3 nodes x 3 slots), Zipf(1.1) from one client: hit rate after
          the first 300 requests;
- even20: 20 models of sizes 1x-5x used equally: the most models and bytes one node serves,
          over the mean.

With the agent, each workload waits (bounded) for the placement to settle after its
warm-up; the ring needs no wait. Writes benchmarks/results/placement.json and placement.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import xgboost as xgb
from common import ROOT, report, start_nodes, stop_nodes

from coordinator.haproxy_api import RuntimeAPI
from coordinator.haproxy_process import HAProxy
from coordinator.lbagent import PlacementAgent
from coordinator.link import Link
from coordinator.processes import free_port
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry

ROW = [0.1, 0.2, 0.3, 0.4]


def publish(registry: Registry, name: str, work: Path, rounds: int) -> int:
    rng = np.random.default_rng(rounds)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(x, label=(x[:, 0] > 0).astype(int)),
        num_boost_round=rounds,
    )
    path = work / f"{name}.ubj"
    booster.save_model(path)
    return registry.publish(path, name, "1.0", features=("f0", "f1", "f2", "f3")).size_bytes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Result = tuple[int, str | None, float]


def send(url: str, sequence: list[str], connections: int) -> list[Result]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    with httpx.Client(timeout=30, limits=limits) as client:

        def one(model: str) -> Result:
            t0 = time.perf_counter()
            try:
                r = client.post(f"{url}/api/v1/models/{model}/predict", json={"features": ROW})
            except httpx.HTTPError:
                return 0, None, time.perf_counter() - t0
            return r.status_code, r.headers.get("x-modelcache-node"), time.perf_counter() - t0

        with ThreadPoolExecutor(connections) as pool:
            return list(pool.map(one, sequence))


def stats(urls: list[str]) -> list[dict[str, Any]]:
    return [httpx.get(f"{u}/api/v1/cache/stats", timeout=5).json() for u in urls]


def hit_rate(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> float:
    hits = sum(a["cache_hits"] - b["cache_hits"] for a, b in zip(after, before, strict=True))
    misses = sum(a["cache_misses"] - b["cache_misses"] for a, b in zip(after, before, strict=True))
    return round(hits / max(1, hits + misses), 4)


class Cluster:
    """Fresh nodes under a fresh key prefix, HAProxy in front, and the agent when `placement`."""

    def __init__(self, registry: Registry, redis_url: str, placement: bool) -> None:
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        env = {"MODELCACHE_CACHE_SIZE": "3", "MODELCACHE_REDIS_PREFIX": self.prefix}
        self.nodes = start_nodes(registry.root, 3, redis_url, env)
        self.urls = [u for _, u in self.nodes]
        self.lb = HAProxy([u.removeprefix("http://") for u in self.urls], free_port()).start()
        self.link = Link.from_url(redis_url, self.prefix)
        self.agent = (
            PlacementAgent(self.link, RuntimeAPI(str(self.lb.runtime_api)), "bench") if placement else None
        )
        self.stop = threading.Event()
        if self.agent is not None:
            self.thread, self.stop = self.agent.start()

    def settle(self, ready: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> float:
        """Seconds until the published placement satisfies `ready`, is applied and holds for 2 s."""
        if self.agent is None:
            return 0.0
        t0 = time.monotonic()
        last, since = -1, time.monotonic()
        while time.monotonic() - t0 < timeout:
            generation = self.agent.applied.generation
            if generation != last:
                last, since = generation, time.monotonic()
            raw = self.link.client.get(self.link.keys.placement)
            if raw and time.monotonic() - since >= 2.0:
                import json

                if ready(json.loads(raw)["models"]):
                    return round(since - t0, 2)
            time.sleep(0.1)
        raise RuntimeError("the placement did not settle")

    def close(self) -> None:
        self.stop.set()
        self.lb.stop()
        stop_nodes(self.nodes)
        self.link.close()


def hot(c: Cluster, models: list[str], requests: int, connections: int, share: float) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    rest = (1 - share) / (len(models) - 1)
    p = [share] + [rest] * (len(models) - 1)
    warm = [models[i] for i in rng.choice(len(models), size=600, p=p)]
    send(c.lb.url, warm, connections)
    waited = c.settle(lambda m: len(m) == len(models) and len(m[models[0]]) >= 2)
    sequence = [models[i] for i in rng.choice(len(models), size=requests, p=p)]
    before = stats(c.urls)
    t0 = time.perf_counter()
    results = send(c.lb.url, sequence, connections)
    elapsed = time.perf_counter() - t0
    after = stats(c.urls)
    served = Counter(node for _, node, _ in results)
    mean = len(results) / 3
    latencies = [t for _, _, t in results]
    return {
        "share_max_over_mean": round(max(served.values()) / mean, 3),
        "share_per_node": sorted((round(n / mean, 3) for n in served.values()), reverse=True),
        "hit_rate": hit_rate(before, after),
        "hot_model_copies": sum(any(e["model_type"] == models[0] for e in s["models"]) for s in after),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "throughput_rps": round(len(results) / elapsed),
        "failed": sum(code != 200 for code, _, _ in results),
        "placement_settled_after_s": waited,
    }


def zipf9(c: Cluster, models: list[str]) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    weights = 1 / np.arange(1, 10) ** 1.1
    sequence = [models[i] for i in rng.choice(9, size=1500, p=weights / weights.sum())]
    send(c.lb.url, models, 1)
    waited = c.settle(lambda m: len(m) == 9)
    send(c.lb.url, sequence[:300], 1)
    before = stats(c.urls)
    results = send(c.lb.url, sequence[300:], 1)
    after = stats(c.urls)
    where: dict[str, set[str | None]] = {}
    for m, (_, node, _) in zip(sequence[300:], results, strict=True):
        where.setdefault(m, set()).add(node)
    return {
        "hit_rate_after_warmup": hit_rate(before, after),
        "models_per_node": sorted(
            Counter(n for nodes in where.values() for n in nodes).values(), reverse=True
        ),
        "failed": sum(code != 200 for code, _, _ in results),
        "placement_settled_after_s": waited,
    }


def even20(c: Cluster, sizes: dict[str, int]) -> dict[str, Any]:
    names = list(sizes)
    send(c.lb.url, names * 10, 4)
    waited = c.settle(lambda m: len(m) == 20)
    results = send(c.lb.url, names * 2, 1)
    where: dict[str, Counter[str | None]] = {}
    for m, (_, node, _) in zip(names * 2, results, strict=True):
        where.setdefault(m, Counter())[node] += 1
    count: Counter[str | None] = Counter()
    held: Counter[str | None] = Counter()
    for m, nodes in where.items():
        node = nodes.most_common(1)[0][0]
        count[node] += 1
        held[node] += sizes[m]
    return {
        "models_per_node": sorted(count.values(), reverse=True),
        "count_max_over_mean": round(max(count.values()) / (20 / 3), 3),
        "bytes_max_over_mean": round(max(held.values()) / (sum(sizes.values()) / 3), 3),
        "failed": sum(code != 200 for code, _, _ in results),
        "placement_settled_after_s": waited,
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("hot", "share_max_over_mean", "60% hot: busiest node / mean", 1.4),
        ("hot", "hit_rate", "60% hot: hit rate", 0.9),
        ("zipf9", "hit_rate_after_warmup", "9 models, 9 slots: hit rate", 0.95),
        ("even20", "count_max_over_mean", "20 models: most per node / mean", 1.3),
        ("even20", "bytes_max_over_mean", "20 models: most bytes / mean", 1.3),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.2))
    names = list(results)
    for ax, (work, key, title, target) in zip(axes, panels, strict=True):
        ax.bar(names, [float(results[n][work][key]) for n in names], color=["#999", "#2a7"])
        ax.axhline(target, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle("3 nodes x 3 cache slots (LRU) through HAProxy: hash ring vs placement", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hot-share", type=float, default=0.6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "placement.json"))
    args = parser.parse_args()
    os.environ.pop("MODELCACHE_CACHE_POLICY", None)  # the default policy
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        work = Path(tmp)
        registry = Registry(work / "registry")
        names = [f"model-{i:03d}" for i in range(36)]
        sizes = {n: publish(registry, n, work, 5 + 10 * (i % 5)) for i, n in enumerate(names)}
        for routing, placement in (("hash ring", False), ("placement", True)):
            rows = results[routing] = {}
            for work_name, run in (
                ("hot", lambda c: hot(c, names[:7], args.requests, args.connections, args.hot_share)),
                ("zipf9", lambda c: zipf9(c, names[7:16])),
                ("even20", lambda c: even20(c, {n: sizes[n] for n in names[16:36]})),
            ):
                cluster = Cluster(registry, redis.url, placement)
                try:
                    rows[work_name] = run(cluster)
                finally:
                    cluster.close()
                print(routing, work_name, rows[work_name], flush=True)
    out = Path(args.out)
    plot(results, out.with_suffix(".png"))
    report(
        str(out),
        {
            "workload": {
                "nodes": 3,
                "cache_size": 3,
                "cache_policy": "lru (default)",
                "hot": {
                    "models": 7,
                    "hot_share": args.hot_share,
                    "requests": args.requests,
                    "connections": args.connections,
                },
                "zipf9": {"models": 9, "zipf_s": 1.1, "requests": 1500, "warmup": 300, "connections": 1},
                "even20": {"models": 20, "size_ratio": round(max(sizes.values()) / min(sizes.values()), 2)},
            },
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
