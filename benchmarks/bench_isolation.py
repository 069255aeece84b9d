"""A small model's latency beside a big model's 1,000-row batches on the same node, driven by wrk.

Issue: with one predict thread for every model, 1,000-row batches of a 3,000-tree
model raised a small model's p99 from a few ms to 100-200 ms. Per configuration,
side by side in one run, three phases of `--duration` seconds each:

- small alone: `--small-conns` wrk connections predicting one row of the small model;
- together: the same beside `--big-conns` wrk connections posting 1,000-row batches of
  the big model (two wrk processes);
- big alone: the big batches without the small traffic.

Reported per configuration (medians over `--reps`): the small model's p99 alone and
beside the big batches and their ratio (the target is <= 3x), and the big model's rows
per second alone and beside the small traffic. Configurations: `one_thread`
(`MODELCACHE_PREDICT_THREADS=1`, the old single thread), `default` (heavy predicts at
nice +10), `sched_idle` (under SCHED_IDLE, opt-in), `process` (SCHED_IDLE worker
processes, opt-in), `heavy_not_lowered`, and with
`--base-root DIR` a node from another checkout (e.g. main before a change).

`--hogs N` runs N busy-looping processes at normal priority through every phase: the
bad day where other work on the node's CPUs (same cgroup) competes with it, which is
where SCHED_IDLE's small share of the CPU shows in the big model's rows per second.

The load comes from wrk (C, its own processes), not from Python in this process: an
httpx client here spent milliseconds of its own event loop encoding each 1,000-row
body with the stdlib json module, and those stalls landed in the small requests'
measured latency (the earlier version of this benchmark, see the README).

    .venv/bin/python benchmarks/bench_isolation.py [--reps 3] [--duration 4] [--base-root DIR]
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
import numpy as np
import xgboost as xgb
from common import ROOT, WRK_RESULT_LUA, report

from coordinator.processes import free_port, stop_process
from coordinator.registry import Registry

FEATURES = [f"f{i}" for i in range(8)]
BIG_ROWS = 1000
SETTLE_S = 0.5
"""Pause after a big phase: batches of wrk's closed connections still queued would answer 429."""

# wrk prints this one JSON line at the end; latencies are in microseconds.
LUA = (
    """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
seen = {}
response = function(status, headers, body)
  if status ~= 200 and not seen[status] then
    seen[status] = true
    io.write("STATUS " .. status .. " " .. string.sub(body, 1, 200) .. "\\n")
  end
end
"""
    + WRK_RESULT_LUA
)


def publish(registry: Registry, work: Path, name: str, rounds: int, depth: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": depth, "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds)
    path = work / f"{name}.ubj"
    booster.save_model(str(path))
    registry.publish(path, name, "1.0.0", features=FEATURES)


def scripts(work: Path) -> dict[str, Path]:
    small = {"features": [0.1 * i for i in range(len(FEATURES))]}
    rows = np.random.default_rng(1).normal(size=(BIG_ROWS, len(FEATURES))).round(3).tolist()
    big = {"instances": rows}
    out = {}
    for name, body in (("small", small), ("big", big)):
        path = work / f"{name}.lua"
        path.write_text(LUA % json.dumps(body))
        out[name] = path
    return out


def start_node(root: Path, registry: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full_env = {
        **os.environ,
        "MODELCACHE_REGISTRY": str(registry),
        "MODELCACHE_LOG_LEVEL": "warning",
        "MODELCACHE_WARMUP": '["small", "big"]',
        "MODELCACHE_GRPC_PORT": "0",
        "PYTHONPATH": str(root),
        **env,
    }
    cmd = [sys.executable, "-m", "node", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"node from {root} did not start")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)


def wrk(url: str, script: Path, conns: int, duration: int) -> subprocess.Popen[str]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str], duration: int) -> dict[str, float]:
    stdout, _ = proc.communicate(timeout=duration + 30)
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    raw = json.loads(line[len("RESULT ") :])
    for ln in stdout.splitlines():
        if ln.startswith("STATUS "):
            print(f"  answered {ln[len('STATUS ') :]}", file=sys.stderr)
    return {
        # Answered requests only: a starved model's fast 429s must not count as its throughput.
        "req_per_s": (raw["requests"] - raw["errors"]) / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "errors": raw["errors"],
    }


def one_rep(url: str, lua: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    small, big = f"{url}/api/v1/models/small/predict", f"{url}/api/v1/models/big/batch_predict"
    d = args.duration
    # Small alone, then beside the big load, back to back: the machine's other load (it is
    # shared) changes less between the two halves of the ratio than over a whole repetition.
    alone = result(wrk(small, lua["small"], args.small_conns, d), d)
    # The big load starts first and ends last, so every small request meets it.
    load = wrk(big, lua["big"], args.big_conns, d + 1)
    time.sleep(0.5)
    beside = result(wrk(small, lua["small"], args.small_conns, d), d)
    big_beside = result(load, d + 1)
    time.sleep(SETTLE_S)
    big_alone = result(wrk(big, lua["big"], args.big_conns, d), d)
    time.sleep(SETTLE_S)
    return {
        "small_p99_alone_ms": alone["p99_ms"],
        "small_p99_beside_big_ms": beside["p99_ms"],
        "p99_ratio": beside["p99_ms"] / alone["p99_ms"],
        "small_req_per_s_alone": alone["req_per_s"],
        "small_req_per_s_beside_big": beside["req_per_s"],
        "big_rows_per_s_alone": big_alone["req_per_s"] * BIG_ROWS,
        "big_rows_per_s_beside_small": big_beside["req_per_s"] * BIG_ROWS,
        "errors_small": alone["errors"] + beside["errors"],
        "errors_big": big_alone["errors"] + big_beside["errors"],
    }


def plot(result: dict[str, object], out: Path) -> None:
    """Small-model p99 alone and beside the big batches, and the big model's rows/s, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in result.items() if isinstance(v, dict)]
    figures = [result[n] for n in names]
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, key, label in (
        (-0.2, "small_p99_alone_ms", "alone"),
        (0.2, "small_p99_beside_big_ms", "beside the big batches"),
    ):
        left.bar(x + offset, [f[key] for f in figures], 0.4, label=label)  # type: ignore[index]
    left.set(xticks=x, xticklabels=names, ylabel="small model p99 (ms)", title="small model p99")
    left.legend()
    for offset, key, label in (
        (-0.2, "big_rows_per_s_alone", "alone"),
        (0.2, "big_rows_per_s_beside_small", "beside small traffic"),
    ):
        right.bar(x + offset, [f[key] for f in figures], 0.4, label=label)  # type: ignore[index]
    right.set(xticks=x, xticklabels=names, ylabel="rows/s", title="big model throughput")
    right.legend()
    fig.suptitle("1,000-row batches of a 3,000-tree model beside a small model (one node, wrk)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk phase")
    parser.add_argument("--small-conns", type=int, default=4)
    parser.add_argument("--big-conns", type=int, default=2)
    parser.add_argument("--base-root", type=Path, help="also run a node from this checkout")
    parser.add_argument("--configs", nargs="+", help="only these configurations")
    parser.add_argument("--hogs", type=int, default=0, help="busy-looping processes beside the node")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "isolation.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    configs: dict[str, tuple[Path, dict[str, str]]] = {
        "one_thread": (ROOT, {"MODELCACHE_PREDICT_THREADS": "1"}),
        "default": (ROOT, {}),
        # Heavy predicts under SCHED_IDLE instead of nice +10 (opt-in), and not lowered at all.
        "sched_idle": (ROOT, {"MODELCACHE_HEAVY_PREDICT_SCHED": "idle"}),
        "process": (ROOT, {"MODELCACHE_HEAVY_PREDICT_SCHED": "process"}),
        "heavy_not_lowered": (
            ROOT,
            {"MODELCACHE_HEAVY_PREDICT_SCHED": "nice", "MODELCACHE_HEAVY_PREDICT_NICE": "0"},
        ),
    }
    if args.base_root:
        configs["base_default"] = (args.base_root.resolve(), {})
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        publish(registry, work, "small", rounds=10, depth=3)
        publish(registry, work, "big", rounds=3000, depth=6)
        lua = scripts(work)
        nodes = {name: start_node(root, registry.root, env) for name, (root, env) in configs.items()}
        load_before = os.getloadavg()[0]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        spin = [sys.executable, "-c", "while True: pass"]
        hogs = [subprocess.Popen(spin) for _ in range(args.hogs)]
        try:
            for rep in range(args.reps):
                # Configurations take turns within each repetition, so machine noise hits all alike.
                order = list(configs)[rep % len(configs) :] + list(configs)[: rep % len(configs)]
                for name in order:
                    runs[name].append(one_rep(nodes[name][1], lua, args))
        finally:
            for proc in [*hogs, *(proc for proc, _ in nodes.values())]:
                stop_process(proc)
    results: dict[str, dict[str, object]] = {
        name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for name, rs in runs.items()
    }
    for name, rs in runs.items():
        results[name]["p99_ratio_each_rep"] = [round(r["p99_ratio"], 2) for r in rs]
    shape = {
        # The machine is shared: its load average (1 min) says how much else ran meanwhile.
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "reps": args.reps,
        "duration_s": args.duration,
        "small_conns": args.small_conns,
        "big_conns": args.big_conns,
        "big_rows": BIG_ROWS,
        "hogs": args.hogs,
    }
    report(args.out, {**shape, **results})
    plot(results, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
