"""A small model's latency beside a big model's 1,000-row batches on the same node.

Issue: with one predict thread for every model, 1,000-row batches of a 3,000-tree
model raised a small model's p99 from a few ms to 100-200 ms. Each configuration runs
in this one process, side by side, and is reported as ratios:

    small model p99 with the big model busy / small model p99 alone

for `MODELCACHE_PREDICT_THREADS=1` (the old single thread) and the default.

    .venv/bin/python benchmarks/bench_isolation.py [--requests 400] [--big-clients 2] [--small-clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import xgboost as xgb
from common import report, start_nodes, stop_nodes

from coordinator.registry import Registry

FEATURES = [f"f{i}" for i in range(8)]


def publish(registry: Registry, work: Path, name: str, rounds: int, depth: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": depth, "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds)
    path = work / f"{name}.ubj"
    booster.save_model(str(path))
    registry.publish(path, name, "1.0.0", features=FEATURES)


async def small_latencies(url: str, n: int, clients: int) -> list[float]:
    """`n` requests for the small model from `clients` concurrent connections."""
    body = {"features": [0.1 * i for i in range(len(FEATURES))]}
    out: list[float] = []

    async def one(count: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(count):
                started = time.perf_counter()
                r = await client.post(f"{url}/api/v1/models/small/predict", json=body)
                out.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text

    await asyncio.gather(*(one(n // clients) for _ in range(clients)))
    return out


async def big_load(url: str, clients: int, stop: asyncio.Event) -> int:
    rows = np.random.default_rng(1).normal(size=(1000, len(FEATURES))).round(3).tolist()
    body = {"model_type": "big", "instances": rows}
    done = 0

    async def one() -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=60) as client:
            while not stop.is_set():
                r = await client.post(f"{url}/api/v1/batch_predict", json=body)
                assert r.status_code in (200, 429), r.text
                done += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


async def measure(url: str, n: int, big_clients: int, small_clients: int) -> dict[str, float]:
    await small_latencies(url, 50, small_clients)  # warm: both models cached
    alone = await small_latencies(url, n, small_clients)
    stop = asyncio.Event()
    load = asyncio.create_task(big_load(url, big_clients, stop))
    await asyncio.sleep(1.0)  # the big batches are flowing
    busy = await small_latencies(url, n, small_clients)
    stop.set()
    batches = await load
    p99_alone, p99_busy = float(np.percentile(alone, 99)), float(np.percentile(busy, 99))
    return {
        "small_p99_alone_ms": round(p99_alone * 1e3, 2),
        "small_p99_beside_big_ms": round(p99_busy * 1e3, 2),
        "p99_ratio": round(p99_busy / p99_alone, 2),
        "big_batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--big-clients", type=int, default=2)
    parser.add_argument("--small-clients", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "isolation.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        publish(registry, work, "small", rounds=10, depth=3)
        publish(registry, work, "big", rounds=3000, depth=6)
        results: dict[str, object] = {}
        for label, threads in (("one_thread", "1"), ("default", None)):
            env = {"MODELCACHE_WARMUP": '["small", "big"]'}
            if threads:
                env["MODELCACHE_PREDICT_THREADS"] = threads
            nodes = start_nodes(registry.root, env=env)
            try:
                results[label] = asyncio.run(
                    measure(nodes[0][1], args.requests, args.big_clients, args.small_clients)
                )
            finally:
                stop_nodes(nodes)
        shape = {
            "requests": args.requests,
            "big_clients": args.big_clients,
            "small_clients": args.small_clients,
        }
        report(args.out, {**shape, **results})


if __name__ == "__main__":
    main()
