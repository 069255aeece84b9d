"""Per-row predict: LightGBM and ONNX (and XGBoost, for scale) through a node vs. their own Python APIs.

    python benchmarks/bench_runtimes.py [--requests 1500] [--reps 5] [--out benchmarks/results/runtimes.json]

Trains one small binary classifier per library (4 features; ONNX: a scikit-learn
pipeline exported with skl2onnx, and an XGBoost model exported with onnxmltools),
publishes each, starts one real node and measures, for one row at a time:

- `own_us`: the library's own Python call (`Booster.predict`, `session.run`,
  `inplace_predict`) in this process;
- `runtime_us`: the node's runtime for that model in this process
  (`LoadedModel.predict`: rows to matrix, the library, outputs);
- `node_us`: a request to the node, one keep-alive connection, on KServe V1
  (`POST /v1/models/{name}:predict`) and on /api/v1 (`/api/v1/models/{name}/predict`).

Rounds are interleaved (every variant once per round, `--reps` rounds) and the
figures are the medians, so the ratios are measured side by side in one run;
absolute times depend on the machine (client and node share its cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from common import ROOT, report, start_nodes, stop_nodes

sys.path.insert(0, str(ROOT))

from coordinator.artifacts import describe_artifact
from coordinator.registry import Registry
from node.runtimes import deserialize
from testkit.model_files import write_lightgbm, write_onnx

ROW = [0.3, -1.2, 0.8, 0.1]


def own_calls(directory: Path) -> dict[str, tuple[Path, Callable[[np.ndarray], object]]]:
    """Each benchmarked model's file, and its library's own one-row predict."""
    import lightgbm as lgb
    import onnxruntime as ort
    import xgboost as xgb

    from testkit.model_files import train_booster

    out: dict[str, tuple[Path, Callable[[np.ndarray], object]]] = {}
    lgb_path = write_lightgbm(directory, "binary").path
    booster = lgb.Booster(model_file=str(lgb_path))
    out["lightgbm"] = (lgb_path, lambda x: booster.predict(x, num_threads=1))
    for kind, name in (("sklearn-pipeline", "onnx-sklearn"), ("xgboost", "onnx-xgboost")):
        path = write_onnx(directory, kind).path
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        out[name] = (path, lambda x, s=session, f=feed: s.run(None, {f: x}))
    xgb_path = directory / "xgb.ubj"
    train_booster(0, rounds=8).save_model(xgb_path)
    xgb_booster = xgb.Booster(model_file=str(xgb_path))
    xgb_booster.set_param({"nthread": 1})
    out["xgboost"] = (xgb_path, lambda x: xgb_booster.inplace_predict(x))
    return out


def per_call_us(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500, help="HTTP requests per variant per round")
    parser.add_argument("--calls", type=int, default=5000, help="in-process calls per variant per round")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/runtimes.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        models = own_calls(Path(tmp))
        loaded = {}
        for name, (path, _) in models.items():
            described = describe_artifact(path)
            meta = registry.publish(path, name, "1.0", features=described.features, task=described.task)
            loaded[name] = deserialize(meta, registry.artifact_path(meta).read_bytes())
        nodes = start_nodes(registry.root)
        try:
            results = measure(models, loaded, nodes[0][1], args)
        finally:
            stop_nodes(nodes)
    report(args.out, {"row": ROW, "requests": args.requests, "reps": args.reps, "results": results})
    plot(results, Path(args.out).with_suffix(".png"))


def measure(models: dict, loaded: dict, url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    x = np.array([ROW], dtype=np.float32)
    variants: dict[str, dict[str, Callable[[], object]]] = {}
    with httpx.Client(timeout=30) as client:
        for name, (_, own) in models.items():
            model = loaded[name]
            kserve = f"{url}/v1/models/{name}:predict"
            api = f"{url}/api/v1/models/{name}/predict"
            variants[name] = {
                "own_us": lambda own=own: own(x),
                "runtime_us": lambda model=model: model.predict([ROW]),
                "node_kserve_v1_us": lambda u=kserve: client.post(
                    u, json={"instances": [ROW]}
                ).raise_for_status(),
                "node_api_v1_us": lambda u=api: client.post(u, json={"features": ROW}).raise_for_status(),
            }
        for per_model in variants.values():  # warm: load each model on the node, warm the connection
            for key, fn in per_model.items():
                per_call_us(fn, 200 if key.startswith("node") else 1000)
        samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in v} for m, v in variants.items()}
        for _ in range(args.reps):
            for name, per_model in variants.items():
                for key, fn in per_model.items():
                    n = args.requests if key.startswith("node") else args.calls
                    samples[name][key].append(per_call_us(fn, n))
    results = {}
    for name, per_model in samples.items():
        figures = {k: round(statistics.median(v), 1) for k, v in per_model.items()}
        figures["runtime_over_own"] = round(figures["runtime_us"] / figures["own_us"], 2)
        figures["node_kserve_v1_over_own"] = round(figures["node_kserve_v1_us"] / figures["own_us"], 2)
        figures["node_kserve_v1_over_api_v1"] = round(
            figures["node_kserve_v1_us"] / figures["node_api_v1_us"], 2
        )
        results[name] = figures
    return results


def plot(results: dict[str, dict[str, float]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'modelcache[bench]'): no plot")
        return
    keys = [("own_us", "library's own call"), ("runtime_us", "node runtime, in process")]
    keys += [("node_api_v1_us", "node, /api/v1 (HTTP)"), ("node_kserve_v1_us", "node, KServe V1 (HTTP)")]
    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for i, (key, label) in enumerate(keys):
        ax.bar(
            np.arange(len(names)) + (i - 1.5) * width, [results[n][key] for n in names], width, label=label
        )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("µs per one-row predict (median, log scale)")
    ax.set_title("One-row predict: each library's own Python call vs. through a node")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
