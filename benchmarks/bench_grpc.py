"""gRPC against HTTP/JSON on one node, at 1 and 64 connections, driven by h2load.

    python benchmarks/bench_grpc.py [--reps 3] [--duration 3] [--conns 1 64] [--rows 1 100]

One real node (`python -m node`, one process, gRPC on its default port) serves
the demo model `churn`, `rows` rows per request, by these doors taking turns
within each repetition (rotating who goes first, so machine noise hits all alike):

- `http-v2-json`: POST /v2/models/churn/infer, a JSON V2 body (the baseline);
- `http-v1-json`: POST /api/v1/models/churn/predict (one row) or
  /api/v1/batch_predict (more), the v1 JSON body;
- `grpc-raw`: inference.GRPCInferenceService/ModelInfer with raw_input_contents
  (what tritonclient.grpc sends);
- `grpc-typed`: the same with typed fp32_contents;
- `grpc-raw-threads`, `grpc-typed-threads`: the same against a second node whose
  gRPC server is the thread-pool flavour (MODELCACHE_GRPC_WORKERS=64, calls
  bridged onto its loop) instead of grpc.aio on the loop: the measurement
  behind the default.

One load generator for all (h2load, nghttp2's C client: HTTP/1.1 for the REST
doors, h2c for gRPC, one stream per connection), so the client's cost is the
same kind on both sides. h2load counts HTTP statuses, and a gRPC error still
answers HTTP 200; so each gRPC run is checked against the node's own count of
`ModelInfer` calls that succeeded. Figures: requests/s, mean latency, and the
ratio of each door to `http-v2-json` in the same repetition (median over
repetitions). Writes `benchmarks/results/grpc.json` and `grpc.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from common import ROOT, report, start_nodes, stop_nodes

from coordinator.demo import publish_demo_models
from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb

MODEL = "churn"
ROW = [12.0, 70.5, 2.0, 1.0, 0.0]


def rest_doors(rows: int) -> list[tuple[str, str, dict]]:
    """(door, path, JSON body) for `rows` rows."""
    matrix = [[v + i % 7 for v in ROW] for i in range(rows)]
    v2 = {"inputs": [{"name": "input-0", "shape": [rows, len(ROW)], "datatype": "FP32", "data": matrix}]}
    if rows == 1:
        v1 = (f"/api/v1/models/{MODEL}/predict", {"features": ROW})
    else:
        v1 = ("/api/v1/batch_predict", {"model_type": MODEL, "instances": matrix})
    return [("http-v2-json", f"/v2/models/{MODEL}/infer", v2), ("http-v1-json", *v1)]


INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_OFFSET = 50  # the node's default gRPC port: its HTTP port + 50
THREADS = 64  # the thread-pool flavour's threads: one per connection at 64


def grpc_of(url: str) -> str:
    return re.sub(r":(\d+)$", lambda m: f":{int(m.group(1)) + GRPC_OFFSET}", url)


def grpc_frame(message: pb.ModelInferRequest) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, the protobuf."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def infer_requests(rows: int = 1) -> dict[str, pb.ModelInferRequest]:
    x = np.array([[v + i % 7 for v in ROW] for i in range(rows)], dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=list(x.shape))
    raw = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[x.tobytes()])
    typed = pb.ModelInferRequest(model_name=MODEL)
    typed.inputs.add().CopyFrom(tensor)
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    return {"grpc-raw": raw, "grpc-typed": typed}


def h2load(url: str, body: Path, conns: int, duration: int, grpc: bool) -> dict[str, float]:
    headers = (
        ["content-type: application/grpc", "te: trailers"] if grpc else ["content-type: application/json"]
    )
    cmd = ["h2load", "-c", str(conns), "-t", "1", "-m", "1", "-D", str(duration), "--warm-up-time", "1"]
    cmd += [a for h in headers for a in ("-H", h)] + ["-d", str(body)]
    if not grpc:
        cmd.append("--h1")
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not (done and rate and mean):
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    return {
        "requests": int(done.group(1)),
        "succeeded": int(done.group(2)),
        "failed": int(done.group(3)),
        "req_per_s": float(rate.group(1)),
        "mean_ms": _ms(mean.group(1)),
    }


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    return (
        value / 1000
        if text.endswith("us")
        else value * 1000
        if text.endswith("s") and "ms" not in text
        else value
    )


def grpc_ok(node_url: str) -> float:
    """ModelInfer calls the node answered OK (its own metric)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{node_url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelcache_http_requests_total"
        and s.labels.get("route") == INFER_PATH
        and s.labels.get("status") == "200"
    )


def plot(results: dict[str, dict[str, dict[str, float]]], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    doors = list(results[cases[0]])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(doors)
    for i, door in enumerate(doors):
        xs = [j + i * width for j in range(len(cases))]
        axes[0].bar(xs, [results[c][door]["req_per_s"] for c in cases], width, label=door)
        axes[1].bar(xs, [results[c][door]["ratio_to_http_v2_json"] for c in cases], width, label=door)
    labels = ("requests/s (median)", "ratio to http-v2-json (same repetition)")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle("one node: gRPC vs HTTP/JSON by rows per request and connections (h2load, loopback)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per h2load run")
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100], help="rows per request")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpc.json")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load is not installed (apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        # 64 connections x 100 rows queue more rows than a model's default backlog bound
        # (8 x BATCH_MAX_ROWS), which sheds them with 429: this measures throughput, not shedding.
        os.environ.setdefault("MODELCACHE_MODEL_QUEUE_MAX_ROWS", "1000000")
        nodes = start_nodes(registry.root)
        os.environ["MODELCACHE_GRPC_WORKERS"] = str(THREADS)  # start_nodes passes the environment on
        try:
            nodes += start_nodes(registry.root)
        finally:
            del os.environ["MODELCACHE_GRPC_WORKERS"]
        try:
            url, threads_url = nodes[0][1], nodes[1][1]
            doors: dict[int, dict[str, tuple[str, Path, bool]]] = {}
            for rows in args.rows:
                doors[rows] = {}
                for name, path, body in rest_doors(rows):
                    httpx.post(url + path, json=body, timeout=30).raise_for_status()  # loads the model
                    (Path(tmp) / f"{name}-{rows}").write_bytes(json.dumps(body).encode())
                    doors[rows][name] = (url + path, Path(tmp) / f"{name}-{rows}", False)
                for name, message in infer_requests(rows).items():
                    frame = Path(tmp) / f"{name}-{rows}"
                    frame.write_bytes(grpc_frame(message))
                    doors[rows][name] = (grpc_of(url) + INFER_PATH, frame, True)
                    doors[rows][f"{name}-threads"] = (grpc_of(threads_url) + INFER_PATH, frame, True)
            runs: dict[str, dict[str, list[dict[str, float]]]] = {}
            names = list(doors[args.rows[0]])
            cases = [(rows, conns) for rows in args.rows for conns in args.conns]
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for rows, conns in cases:
                    case = f"{rows} row{'s' if rows > 1 else ''}, {conns} conn"
                    for name in order:
                        target, body, is_grpc = doors[rows][name]
                        node_url = threads_url if name.endswith("-threads") else url
                        before = grpc_ok(node_url) if is_grpc else 0.0
                        r = h2load(target, body, conns, args.duration, is_grpc)
                        if is_grpc:
                            # Every call h2load counted (warm-up included) was an OK ModelInfer.
                            r["grpc_ok"] = grpc_ok(node_url) - before
                            if r["failed"] or r["grpc_ok"] < r["succeeded"]:
                                raise RuntimeError(f"{name}: gRPC calls failed: {r}")
                        runs.setdefault(case, {}).setdefault(name, []).append(r)
                        print(f"rep {rep} {name} {case}: {r}", file=sys.stderr)
        finally:
            stop_nodes(nodes)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case, by_door in runs.items():
        base = by_door["http-v2-json"]
        results[case] = {
            door: {
                "req_per_s": round(statistics.median(r["req_per_s"] for r in rs), 1),
                "mean_ms": round(statistics.median(r["mean_ms"] for r in rs), 3),
                "ratio_to_http_v2_json": round(
                    statistics.median(r["req_per_s"] / b["req_per_s"] for r, b in zip(rs, base, strict=True)),
                    2,
                ),
            }
            for door, rs in by_door.items()
        }
    plot(results, args.out.with_suffix(".png"))
    report(
        str(args.out),
        {
            "what": "one node, rows per request and connections per case; "
            "req/s and mean latency are medians over repetitions, "
            "ratio_to_http_v2_json the median of per-repetition ratios (same run, doors taking turns)",
            "client": "h2load -t1 -m1 (HTTP/1.1 for REST, h2c for gRPC)",
            "reps": args.reps,
            "duration_s": args.duration,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
