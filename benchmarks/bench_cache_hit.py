"""What a cache hit costs in process: `ModelService.get` and its parts.

    python benchmarks/bench_cache_hit.py [--calls 200000]

Issue 9 asks for a hit lookup of at most 5 µs. This times the whole hit path
(`await ModelService.get(model_type)`, and with an explicit version) and each
step it takes, on their own, so the figure can be attributed: the cache's
lock and entry statistics, the two Prometheus counter updates (`labels()`
is a dict lookup under a lock, `inc()` another lock), the `Resolved` record
and the coroutine layers. Medians of 5 repetitions, in microseconds, written
to `benchmarks/results/cache_hit.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import ROOT, report

from coordinator.demo import publish_demo_models
from coordinator.registry import Registry
from node.app import build_node
from node.service import Resolved
from node.settings import NodeSettings


def median_us(fn: Callable[[], object], calls: int, reps: int = 5) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return round(statistics.median(samples), 3)


def async_median_us(loop: asyncio.AbstractEventLoop, make: Callable[[], object], calls: int) -> float:
    async def batch() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await make()  # type: ignore[misc]
        return (time.perf_counter() - t0) / calls * 1e6

    return round(statistics.median(loop.run_until_complete(batch()) for _ in range(5)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache_hit.json"))
    args = parser.parse_args()
    n = args.calls
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        node = build_node(NodeSettings(registry=registry.root))
        metrics, service, resolver = node.metrics, node.service, node.resolver
        loop = asyncio.new_event_loop()
        loop.run_until_complete(service.get("churn"))
        version = resolver.default_version("churn")
        key = ("churn", version)
        cache = node.loads.cache
        model = cache.peek(key)
        lock = threading.Lock()
        counter = Counter[str]()

        def locked() -> None:
            with lock:
                pass

        def no_load() -> tuple[object, int]:
            raise AssertionError("miss")

        parts = {
            "dict_get_us": median_us(lambda: cache._cache._data.get(key), n),
            "lock_acquire_release_us": median_us(locked, n),
            "time_time_us": median_us(time.time, n),
            "cache_lookup_us": median_us(lambda: cache._lookup(key), n),
            "cache_get_or_load_us": median_us(lambda: cache.get_or_load(key, no_load), n),
            "counter_labels_inc_us": median_us(lambda: metrics.cache_hits.labels("churn").inc(), n),
            "resolved_record_us": median_us(lambda: Resolved(model, version, True), n),  # type: ignore[arg-type]
            "request_counter_us": median_us(lambda: counter.update(("churn",)), n),
            "default_version_us": median_us(lambda: resolver.default_version("churn"), n),
            "recently_failed_us": median_us(lambda: resolver.recently_failed(key), n),
        }
        whole = {
            "cache_aget_or_load_us": async_median_us(loop, lambda: cache.aget_or_load(key, no_load), n),
            "service_get_default_us": async_median_us(loop, lambda: service.get("churn"), n),
            "service_get_version_us": async_median_us(loop, lambda: service.get("churn", version), n),
        }
        loop.close()
        node.close()
    report(args.out, {"calls": n, "hit_path": whole, "parts": parts})


if __name__ == "__main__":
    main()
