"""Cluster propagation latency: one pin call → every node acknowledged / serving.

    python benchmarks/bench_propagation.py [--changes 30] [--out benchmarks/results/propagation.json]

Starts an embedded redis-server and three real nodes on loopback, then times
alternating pins of one model type two ways:
* excluding load time: the model is not cached on any node, so applying the pin
  is a state change plus a checksum check;
* including load time: the model is cached on every node, so each pin loads the
  new version beside the old one and swaps it in.
For each change it records call → every node acknowledged (the `--wait` path)
and call → every node answering predictions with the new version.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, report, start_nodes, stop_nodes

from coordinator.control import Control
from coordinator.demo import publish_demo_models
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry

ROW = [12, 70.5, 2, 1, None]
TOKEN = "bench-token"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_changes(
    control: Control,
    urls: list[str],
    model_type: str,
    versions: tuple[str, str],
    changes: int,
    predict: bool,
) -> dict[str, float]:
    acked, serving = [], []
    client = httpx.Client(timeout=10)
    body = {"model_type": model_type, "features": ROW}
    for i in range(changes):
        version = versions[i % 2]
        t0 = time.perf_counter()
        change = control.pin(model_type, version)
        rows = control.members.wait_for_acks(change, timeout_s=10, poll_s=0.001)
        acked.append(time.perf_counter() - t0)
        assert all(r.outcome == "ok" for r in rows), rows
        if predict:
            pending = set(urls)
            while pending:
                for url in list(pending):
                    if client.post(f"{url}/api/v1/predict", json=body).json()["version"] == version:
                        pending.discard(url)
            serving.append(time.perf_counter() - t0)
    client.close()
    out = {
        "changes": changes,
        "acked_median_ms": round(percentile(acked, 0.5) * 1e3, 2),
        "acked_p99_ms": round(percentile(acked, 0.99) * 1e3, 2),
    }
    if serving:
        out["serving_median_ms"] = round(percentile(serving, 0.5) * 1e3, 2)
        out["serving_p99_ms"] = round(percentile(serving, 0.99) * 1e3, 2)
    return out


def run_http_pins(
    urls: list[str], model_type: str, versions: tuple[str, str], changes: int
) -> dict[str, float]:
    """What an operator sees: PUT /api/v1/pins (wait=true) on one node -> every node serving it."""
    acked, serving = [], []
    client = httpx.Client(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"})
    body = {"model_type": model_type, "features": ROW}
    for i in range(changes):
        version = versions[i % 2]
        t0 = time.perf_counter()
        answer = client.put(f"{urls[0]}/api/v1/pins/{model_type}", json={"version": version, "wait": True})
        acked.append(time.perf_counter() - t0)
        assert answer.status_code == 200 and answer.json()["ok"], answer.text
        pending = set(urls)
        while pending:
            for url in list(pending):
                if client.post(f"{url}/api/v1/predict", json=body).json()["version"] == version:
                    pending.discard(url)
        serving.append(time.perf_counter() - t0)
    client.close()
    return {
        "changes": changes,
        "acked_median_ms": round(percentile(acked, 0.5) * 1e3, 2),
        "acked_p99_ms": round(percentile(acked, 0.99) * 1e3, 2),
        "serving_median_ms": round(percentile(serving, 0.5) * 1e3, 2),
        "serving_p99_ms": round(percentile(serving, 0.99) * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "propagation.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_server:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        os.environ["MODELCACHE_ADMIN_TOKEN"] = TOKEN  # the nodes inherit it
        nodes = start_nodes(registry.root, args.nodes, redis_server.url)
        urls = [url for _, url in nodes]
        control = Control.connect(redis_server.url, registry, origin="bench")
        try:
            # Excluding load time: fraud is cached nowhere (no request touches it).
            cold = run_changes(control, urls, "fraud", ("1.0.0", "1.2.0"), args.changes, predict=False)
            # Including load time: churn is cached everywhere, every pin loads and swaps.
            for url in urls:
                httpx.post(f"{url}/api/v1/predict", json={"model_type": "churn", "features": ROW})
            hot = run_changes(control, urls, "churn", ("1.0.0", "1.1.0"), args.changes, predict=True)
            http = run_http_pins(urls, "churn", ("1.0.0", "1.1.0"), args.changes)
        finally:
            control.close()
            stop_nodes(nodes)
    report(
        args.out,
        {
            "nodes": args.nodes,
            "excluding_load": cold,
            "including_load": hot,
            "http_pin_including_load": http,
        },
    )


if __name__ == "__main__":
    main()
