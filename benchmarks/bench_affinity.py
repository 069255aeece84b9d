"""Consistent hashing, bounded loads for all, bounded loads for hot models only, on a skewed workload.

    python benchmarks/bench_affinity.py [--requests 3000] [--connections 32] [--hot-share 0.6]
        [--policies lru,lfu]

Three real nodes (MODELCACHE_CACHE_SIZE=3) with a real Redis; seven models, one taking
`--hot-share` of the requests. The names are picked as in tests/deploy/test_lb.py: the
hot model alone on its home node, three cold ones on each other node. For each node
cache policy and each routing (plain consistent hashing; every model bounded at
hash-balance-factor 125, the previous config; only hot models bounded, at the default
factor), fresh nodes and a fresh HAProxy serve the same request sequence; reported:
per-node request share (max/mean), cluster hit rate (the nodes' own stats), p50/p99
latency at the client, and how many nodes cache the hot model.
Writes benchmarks/results/affinity.json and affinity.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import xgboost as xgb
from common import ROOT, report, start_nodes, stop_nodes

from coordinator.haproxy_process import HAProxy
from coordinator.lb import BALANCE_FACTOR
from coordinator.processes import free_port
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry

ROW = [0.1, 0.2, 0.3, 0.4]
ROUTINGS: dict[str, dict[str, int | bool]] = {
    "consistent hashing": {"balance_factor": 0},
    "bounded for all (125)": {"balance_factor": 125, "hot_only": False},
    f"bounded for hot only ({BALANCE_FACTOR})": {"balance_factor": BALANCE_FACTOR, "hot_only": True},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def publish(registry: Registry, name: str, work: Path) -> None:
    rng = np.random.default_rng(len(name))
    x = rng.normal(size=(200, 4)).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=(x[:, 0] > 0).astype(int)),
        num_boost_round=5,
    )
    path = work / f"{name}.ubj"
    booster.save_model(path)
    registry.publish(path, name, "1.0", features=("f0", "f1", "f2", "f3"), metrics={"f1": 0.9})


def layout(url: str) -> list[str]:
    """The hot model alone on its home, three cold ones on each other node (asked one at a time)."""
    with httpx.Client(timeout=10) as c:
        where = {
            f"model-{i:03d}": c.get(f"{url}/api/v1/models/model-{i:03d}/versions/1.0").headers[
                "x-modelcache-node"
            ]
            for i in range(60)
        }
    hot = next(iter(where))
    rest: dict[str, list[str]] = {}
    for name, node in where.items():
        if node != where[hot]:
            rest.setdefault(node, []).append(name)
    return [hot, *(n for names in rest.values() for n in names[:3])]


def run(
    registry: Registry,
    redis_url: str,
    routing: dict[str, int | bool],
    sequence_idx: list[int],
    connections: int,
) -> dict[str, object]:
    nodes = start_nodes(registry.root, 3, redis_url)
    lb = HAProxy([u.removeprefix("http://") for _, u in nodes], free_port(), **routing)  # type: ignore[arg-type]
    try:
        lb.start()
        models = layout(lb.url)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        with httpx.Client(timeout=30, limits=limits) as client:

            def one(i: int) -> tuple[int, str | None, float]:
                t0 = time.perf_counter()
                try:
                    r = client.post(f"{lb.url}/api/v1/models/{models[i]}/predict", json={"features": ROW})
                except httpx.HTTPError:
                    return 0, None, time.perf_counter() - t0
                return r.status_code, r.headers.get("x-modelcache-node"), time.perf_counter() - t0

            t0 = time.perf_counter()
            with ThreadPoolExecutor(connections) as pool:
                results = list(pool.map(one, sequence_idx))
            elapsed = time.perf_counter() - t0
        stats = [httpx.get(f"{u}/api/v1/cache/stats", timeout=5).json() for _, u in nodes]
    finally:
        lb.stop()
        stop_nodes(nodes)
    served = Counter(node for _, node, _ in results)
    mean = len(results) / 3
    hits = sum(s["cache_hits"] for s in stats)
    misses = sum(s["cache_misses"] for s in stats)
    latencies = [t for _, _, t in results]
    return {
        "hash_balance_factor": routing["balance_factor"],
        "hot_only": bool(routing.get("hot_only", False)),
        "share_max_over_mean": round(max(served.values()) / mean, 3),
        "share_per_node": sorted((round(c / mean, 3) for c in served.values()), reverse=True),
        "hit_rate": round(hits / (hits + misses), 4),
        "misses": misses,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "throughput_rps": round(len(results) / elapsed),
        "hot_model_copies": sum(any(e["model_type"] == models[0] for e in s["models"]) for s in stats),
        "failed": sum(code != 200 for code, _, _ in results),
    }


def plot(results: dict[str, dict[str, dict[str, object]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    policies = list(results)
    names = list(next(iter(results.values())))
    width = 0.8 / len(names)
    colors = ["#999", "#d84", "#2a7"]
    for ax, (key, title) in zip(
        axes,
        [
            ("share_max_over_mean", "busiest node's share / mean"),
            ("hit_rate", "cluster hit rate"),
            ("p99_ms", "p99 latency (ms)"),
            ("hot_model_copies", "nodes caching the hot model"),
        ],
        strict=True,
    ):
        for j, name in enumerate(names):
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(policies))]
            values = [float(results[p][name][key]) for p in policies]
            ax.bar(xs, values, width, color=colors[j % len(colors)], label=name)
        ax.set_xticks(range(len(policies)), [f"node cache {p.upper()}" for p in policies], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].axhline(1.4, color="k", lw=0.8, ls="--")
    axes[1].axhline(0.9, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle("7 models, one with 60% of requests, 3 nodes x 3 cache slots, through HAProxy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hot-share", type=float, default=0.6)
    parser.add_argument("--policies", default="lru,lfu", help="node cache policies, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "affinity.json"))
    args = parser.parse_args()
    os.environ["MODELCACHE_CACHE_SIZE"] = "3"
    os.environ["MODELCACHE_RECONCILE_INTERVAL_S"] = "1"
    rng = np.random.default_rng(7)
    rest = (1 - args.hot_share) / 6
    sequence = [int(i) for i in rng.choice(7, size=args.requests, p=[args.hot_share] + [rest] * 6)]
    results: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        work = Path(tmp)
        registry = Registry(work / "registry")
        for i in range(60):
            publish(registry, f"model-{i:03d}", work)
        for policy in args.policies.split(","):
            os.environ["MODELCACHE_CACHE_POLICY"] = policy
            rows = results[policy] = {}
            for name, routing in ROUTINGS.items():
                rows[name] = run(registry, redis.url, routing, sequence, args.connections)
                print(policy, name, rows[name], flush=True)
    out = Path(args.out)
    plot(results, out.with_suffix(".png"))
    report(
        str(out),
        {
            "workload": {
                "requests": args.requests,
                "connections": args.connections,
                "models": 7,
                "hot_share": args.hot_share,
                "nodes": 3,
                "cache_size": 3,
            },
            "routings_by_cache_policy": results,
        },
    )


if __name__ == "__main__":
    main()
