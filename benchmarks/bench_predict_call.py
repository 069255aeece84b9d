"""The cost of one predict call: XGBoost's `inplace_predict` against `DensePredictor`.

    python benchmarks/bench_predict_call.py [--calls 20000] [--reps 5]

In process, on the demo model `churn`, for 1 and 100 rows: the raw C call
(`DensePredictor`), XGBoost's `Booster.inplace_predict`, and the node's whole
adapter (`BoosterAdapter.predict`, outputs as lists) and `LoadedModel.predict`
(validation from JSON-like rows included). Variants take turns in each
repetition; medians of per-call microseconds and the inplace/C ratio are
written to `benchmarks/results/predict_call.json`.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT, report

from coordinator.demo import publish_demo_models
from coordinator.registry import Registry
from node.runtime import BoosterAdapter, deserialize

ROW = [12.0, 70.5, 2.0, 1.0, None]


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_call.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        meta = registry.metadata("churn", registry.latest("churn"))
        model = deserialize(meta, registry.artifact_path(meta).read_bytes())
    adapter = model.adapter
    assert isinstance(adapter, BoosterAdapter) and adapter.dense is not None
    booster, dense = adapter.booster, adapter.dense
    results: dict[str, dict[str, float]] = {}
    for n in (1, 100):
        rows = [ROW] * n
        x = model.to_matrix(rows)
        variants = {
            "c_dense_us": lambda x=x: dense(x),
            "inplace_predict_us": lambda x=x: booster.inplace_predict(x),
            "adapter_predict_us": lambda x=x: adapter.predict(x),
            "loaded_model_predict_us": lambda rows=rows: model.predict(rows),
        }
        calls = args.calls if n == 1 else args.calls // 10
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():
            per_call_us(fn, calls // 10)  # warm
        for _ in range(args.reps):
            for name, fn in variants.items():
                samples[name].append(per_call_us(fn, calls))
        figures = {k: round(statistics.median(v), 2) for k, v in samples.items()}
        figures["inplace_over_c"] = round(figures["inplace_predict_us"] / figures["c_dense_us"], 2)
        results[f"{n}_rows"] = figures
    report(args.out, {"model": f"churn {meta.version}", "calls": args.calls, "results": results})


if __name__ == "__main__":
    main()
