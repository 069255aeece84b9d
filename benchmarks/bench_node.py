"""Node throughput and latency over loopback, and the in-process cost of a cache hit.

    python benchmarks/bench_node.py [--requests 2000] [--out benchmarks/results/node.json]

Starts a real node (`python -m node`) on a free port over a temporary registry
with the demo models, warms the model, then sends requests one at a time from
one keep-alive connection (client and server share this machine's cores, so
the figures are a floor, not a ceiling). Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, report, start_nodes, stop_nodes

from coordinator.demo import publish_demo_models
from coordinator.registry import Registry

ROW = [12, 70.5, 2, 1, None]


def v2_body(rows: int) -> dict:
    """The same rows as /api/v1, as an Open Inference Protocol request (JSON data)."""
    values = [0.0 if v is None else v for v in ROW]
    return {
        "inputs": [
            {"name": "input-0", "shape": [rows, len(ROW)], "datatype": "FP32", "data": [values] * rows}
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }


def measure(client: httpx.Client, url: str, body: dict, n: int) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm connection and model
        client.post(url, json=body).raise_for_status()
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        client.post(url, json=body).raise_for_status()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": n,
        "req_per_s": round(n / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 3),
    }


def in_process_hit_cost(registry: Registry, n: int = 50_000) -> dict[str, float]:
    from node.app import build_node
    from node.settings import NodeSettings

    node = build_node(NodeSettings(registry=registry.root))
    service = node.service

    async def run() -> tuple[float, float]:
        await service.get("churn")
        key = ("churn", node.resolver.default_version("churn"))
        t0 = time.perf_counter()
        for _ in range(n):
            node.loads.cache.get_or_load(key, lambda: (None, 0))  # type: ignore[arg-type,return-value]
        raw = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            await service.get("churn")
        full = (time.perf_counter() - t0) / n
        return raw, full

    raw, full = asyncio.run(run())
    return {"cache_get_us": round(raw * 1e6, 3), "service_get_us": round(full * 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "node.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        nodes = start_nodes(registry.root)
        url = nodes[0][1]
        try:
            with httpx.Client(timeout=10) as client:
                single = measure(
                    client, f"{url}/api/v1/predict", {"model_type": "churn", "features": ROW}, args.requests
                )
                batch = measure(
                    client,
                    f"{url}/api/v1/batch_predict",
                    {"model_type": "churn", "instances": [ROW] * 100},
                    args.requests // 4,
                )
                v2_single = measure(client, f"{url}/v2/models/churn/infer", v2_body(1), args.requests)
                v2_batch = measure(client, f"{url}/v2/models/churn/infer", v2_body(100), args.requests // 4)
        finally:
            stop_nodes(nodes)
        hit = in_process_hit_cost(registry)
    report(
        args.out,
        {
            "predict_single_row": single,
            "batch_predict_100_rows": batch,
            "v2_infer_single_row": v2_single,
            "v2_infer_100_rows": v2_batch,
            "in_process_hit": hit,
        },
    )


if __name__ == "__main__":
    main()
