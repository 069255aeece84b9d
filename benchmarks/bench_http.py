"""One node against the bare Starlette baseline, over HTTP, driven by wrk.

    python benchmarks/bench_http.py [--reps 3] [--duration 3] [--conns 1 64]
        [--base-root DIR]  # also run a node from another checkout (e.g. before a change)
    [--batch-modes thread adaptive]  # also the bare app over node.batching

Starts, on the demo model `churn`, the bare app (`bare_app.py`, the baseline)
and a real node (`python -m node`, one uvicorn worker), optionally a second
node from `--base-root`, then runs wrk against `/api/v1/models/churn/predict`
and `/v2/models/churn/infer` at each connection count. Servers take turns
within each repetition (rotating who goes first), so machine noise hits all
of them alike: the ratio to the baseline is the figure, not the absolute rate.
Writes `benchmarks/results/http.json` and `http.png` (throughput and p99 by
concurrency; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, WRK_RESULT_LUA, report

from coordinator.demo import publish_demo_models
from coordinator.processes import free_port, stop_process
from coordinator.registry import Registry

MODEL = "churn"
ROW = [12.0, 70.5, 2.0, 1.0, 0.0]
ENDPOINTS = {
    "v1": (f"/api/v1/models/{MODEL}/predict", {"features": ROW}),
    "v2": (
        f"/v2/models/{MODEL}/infer",
        {"inputs": [{"name": "input-0", "shape": [1, len(ROW)], "datatype": "FP32", "data": ROW}]},
    ),
}

# wrk prints this one JSON line at the end; latencies are in microseconds.
LUA = (
    """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""
    + WRK_RESULT_LUA
)


def start_server(cmd: list[str], cwd: Path, env: dict[str, str], port: int, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{' '.join(cmd)} did not start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)


def start_node(root: Path, registry: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        "MODELCACHE_REGISTRY": str(registry),
        "MODELCACHE_LOG_LEVEL": "warning",
        "MODELCACHE_WARMUP": json.dumps([MODEL]),
        "PYTHONPATH": str(root),
    }
    cmd = [sys.executable, "-m", "node", "--port", str(port)]
    return start_server(cmd, root, env, port, "/readyz"), f"http://127.0.0.1:{port}"


def start_bare(model_path: Path, batch: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), "--port", str(port)]
    cmd += ["--model", str(model_path)] + (["--batch", batch] if batch else [])
    return start_server(cmd, ROOT, {}, port, "/healthz"), f"http://127.0.0.1:{port}"


def parse_wrk(stdout: str) -> dict[str, float]:
    """The RESULT line the Lua `done` hook prints, as req/s and milliseconds."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    raw = json.loads(line[len("RESULT ") :])
    return {
        "req_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "errors": raw["errors"],
    }


def run_wrk(url: str, script: Path, conns: int, duration: int) -> dict[str, float]:
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    return parse_wrk(out.stdout)


def summarise(runs: dict[str, list[dict[str, float]]], baseline: str) -> dict[str, dict]:
    """Median of each figure per server, and each server's throughput ratio to the baseline."""
    medians = {
        name: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for name, rs in runs.items()
    }
    base = medians[baseline]["req_per_s"]
    for m in medians.values():
        m["ratio_to_bare"] = round(m["req_per_s"] / base, 3) if base else 0.0
    return medians


def plot(results: dict[str, dict], conns: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(ENDPOINTS), figsize=(5 * len(ENDPOINTS), 7), squeeze=False)
    for col, ep in enumerate(ENDPOINTS):
        for row, (figure, label) in enumerate((("req_per_s", "requests/s"), ("p99_ms", "p99 latency (ms)"))):
            ax = axes[row][col]
            servers = list(results[f"{ep}@{conns[0]}"])
            for server in servers:
                ys = [results[f"{ep}@{c}"][server][figure] for c in conns]
                ax.plot(conns, ys, marker="o", label=server)
            ax.set_xscale("log", base=2)
            ax.set_xticks(conns, [str(c) for c in conns])
            ax.set_xlabel("connections")
            ax.set_ylabel(label)
            ax.set_title(f"{ENDPOINTS[ep][0]}")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("modelcache node vs bare Starlette+orjson+XGBoost (one uvicorn worker, wrk, loopback)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--base-root", type=Path, help="also run a node from this checkout, as node-base")
    parser.add_argument(
        "--batch-modes",
        nargs="*",
        default=[],
        choices=["thread", "adaptive"],
        help="also run the bare app over node.batching (bare+batch-MODE)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "http.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        meta = registry.metadata(MODEL, registry.latest(MODEL))
        scripts = {}
        for ep, (_path, body) in ENDPOINTS.items():
            scripts[ep] = Path(tmp) / f"{ep}.lua"
            scripts[ep].write_text(LUA % json.dumps(body))
        servers = {"bare": start_bare(registry.artifact_path(meta))}
        try:
            servers["node"] = start_node(ROOT, registry.root)
            for mode in args.batch_modes:
                servers[f"bare+batch-{mode}"] = start_bare(registry.artifact_path(meta), mode)
            if args.base_root:
                servers["node-base"] = start_node(args.base_root.resolve(), registry.root)
            for name, (_proc, url) in servers.items():  # warm connections, model and code paths
                for path, body in ENDPOINTS.values():
                    for _ in range(200):
                        httpx.post(url + path, json=body, timeout=5).raise_for_status()
                print(f"{name}: {url} ready", file=sys.stderr)
            runs: dict[str, dict[str, list]] = {}
            names = list(servers)
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for conns in args.conns:
                    for ep, (path, _body) in ENDPOINTS.items():
                        for name in order:
                            r = run_wrk(servers[name][1] + path, scripts[ep], conns, args.duration)
                            runs.setdefault(f"{ep}@{conns}", {}).setdefault(name, []).append(r)
                            print(f"rep {rep} {ep}@{conns} {name}: {r}", file=sys.stderr)
        finally:
            for proc, _url in servers.values():
                stop_process(proc)
    results = {key: summarise(by_server, "bare") for key, by_server in runs.items()}
    report(
        str(args.out),
        {
            "method": f"wrk, {args.reps} interleaved reps x {args.duration}s per point; medians",
            "model": f"{MODEL} {meta.version} ({meta.size_bytes} bytes)",
            "results": results,
            "runs": runs,
        },
    )
    try:
        plot(results, args.conns, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
