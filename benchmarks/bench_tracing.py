"""What tracing costs: the same node with tracing off and on (default sampling), driven by wrk.

    python benchmarks/bench_tracing.py [--reps 3] [--duration 3] [--conns 1 16]
        [--base-root DIR]  # also a node from another checkout (before tracing), to show "off" costs nothing

Starts a real OTLP receiver process (testkit/otlp_receiver.py) and, on the demo model
`churn`, nodes from this checkout:

- `off`: MODELCACHE_TRACING unset;
- `on`: MODELCACHE_TRACING=true, OTEL_TRACES_SAMPLER unset (node.otel's default:
  parent-based, 0.1% of new traces), exporting over OTLP/HTTP to the receiver;
- `on-none`: the same recording no request (OTEL_TRACES_SAMPLER_ARG=0): the fixed cost;
- `on-all`: the same with OTEL_TRACES_SAMPLER=always_on (every request recorded and
  exported: the cost of one recorded request, for reference, not a setting to run with).

Then the same three settings (off, on, on-none) in process: the node's ASGI app called
directly for `--requests` requests per run, each run its own process, modes alternating,
CPU time per request (no server, client or network to add noise). Besides the direct `on`
figure, `cost_model` predicts the CPU overhead at a sampling ratio r as
(on-none - off) + r x (on-all - off), per request.

wrk sends no `traceparent`, so the sampler decides. Servers take turns within each
repetition (rotating who goes first) so noise hits all alike; the figures are each one's
throughput and CPU time per request (from /proc, the node process with its exporter thread;
the receiver's own work is not the node's) as ratios to `off`, medians over the
repetitions. Writes
`benchmarks/results/tracing.json` and `tracing.png`.
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
from pathlib import Path

import httpx
from bench_http import ENDPOINTS, LUA, MODEL, parse_wrk, start_server
from common import ROOT, report

from coordinator.demo import publish_demo_models
from coordinator.processes import free_port, stop_process
from coordinator.registry import Registry
from node.otel import DEFAULT_RATIO
from testkit.otlp_receiver import OtlpReceiver


def start_node(root: Path, registry: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    settings = {
        "MODELCACHE_REGISTRY": str(registry),
        "MODELCACHE_LOG_LEVEL": "warning",
        "MODELCACHE_WARMUP": json.dumps([MODEL]),
        "MODELCACHE_GRPC_PORT": "0",
        "PYTHONPATH": str(root),
        **env,
    }
    cmd = [sys.executable, "-m", "node", "--port", str(port)]
    return start_server(cmd, root, settings, port, "/readyz"), f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (its threads, the span exporter's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, conns: int, duration: int, pid: int) -> dict[str, float]:
    """wrk's figures and the node's CPU time per request meanwhile."""
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url]
    before = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    used = cpu_seconds(pid) - before
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    requests = json.loads(line[len("RESULT ") :])["requests"]
    return {**parse_wrk(out.stdout), "cpu_us_per_req": used / requests * 1e6 if requests else 0.0}


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Medians per server; throughput and CPU per request as ratios to `off`, paired per repetition.

    Each ratio is taken within one repetition (the servers ran back to back) and the median
    of those is reported: on a shared machine the load drifts between repetitions more than
    within one. CPU time per request is what other processes disturb least, throughput what
    a client sees.
    """
    medians = {
        name: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for name, rs in runs.items()
    }
    off = runs["off"]
    for name, m in medians.items():
        pairs = list(zip(runs[name], off, strict=True))
        m["ratio_to_off"] = round(statistics.median(r["req_per_s"] / o["req_per_s"] for r, o in pairs), 3)
        m["cpu_ratio_to_off"] = round(
            statistics.median(r["cpu_us_per_req"] / o["cpu_us_per_req"] for r, o in pairs), 3
        )
    return medians


def plot(results: dict[str, dict[str, dict[str, float]]], out: Path) -> None:
    """Throughput and CPU per request of each server as ratios to tracing off, per route and load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    servers = [s for s in results[keys[0]] if s != "on-all"]  # on-all is off the scale (0.2-0.3x)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(servers)
    for ax, figure, label, target in (
        (axes[0], "ratio_to_off", "throughput / tracing off", 0.95),
        (axes[1], "cpu_ratio_to_off", "CPU per request / tracing off", 1.05),
    ):
        for i, server in enumerate(servers):
            ratios = [results[k][server][figure] for k in keys]
            ax.bar([x + i * width for x in range(len(keys))], ratios, width, label=server)
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label="5% overhead")
        ax.axhline(1.0, color="black", linewidth=0.5)
        ax.set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(keys))], keys)
        ax.set_ylabel(label)
        ax.set_ylim(0.7, 1.3)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("tracing overhead: same node, wrk over loopback, medians of paired ratios")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


# -- in process: the node's ASGI app called directly, no server, client or network -------------
DRIVE_MODES = {
    "off": {},
    "on": {"MODELCACHE_TRACING": "true"},
    "on-none": {"MODELCACHE_TRACING": "true", "OTEL_TRACES_SAMPLER_ARG": "0"},
}


def drive(registry: Path, n: int) -> None:
    """(In a child process, its env set by `in_process`.) CPU seconds per request, printed."""
    import asyncio
    import time

    from node.app import build_app
    from node.settings import NodeSettings

    app = build_app(NodeSettings(registry=registry, grpc_port=0))
    path, body = ENDPOINTS["v1"]
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    async def run(count: int) -> None:
        for _ in range(count):
            await app({**scope}, receive, send)

    asyncio.run(run(500))  # load the model, warm the code paths
    started = time.process_time()
    asyncio.run(run(n))
    print(json.dumps({"cpu_us_per_req": (time.process_time() - started) / n * 1e6}))


def in_process(registry: Path, receiver: OtlpReceiver, reps: int, n: int) -> dict[str, object]:
    """Each mode in its own process, modes alternating; CPU per request and paired ratios to off."""
    runs: dict[str, list[float]] = {}
    for rep in range(reps):
        modes = list(DRIVE_MODES)
        for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
            env = {**os.environ, **receiver.endpoint("http/protobuf"), **DRIVE_MODES[mode]}
            env["PYTHONPATH"] = str(ROOT)
            cmd = [sys.executable, __file__, "--drive", str(registry), "--requests", str(n)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
            runs.setdefault(mode, []).append(json.loads(out.stdout.splitlines()[-1])["cpu_us_per_req"])
            print(f"in-process rep {rep} {mode}: {runs[mode][-1]:.1f} us/request", file=sys.stderr)
    ratios = {
        mode: round(statistics.median(v / o for v, o in zip(values, runs["off"], strict=True)), 3)
        for mode, values in runs.items()
    }
    medians = {mode: round(statistics.median(values), 2) for mode, values in runs.items()}
    return {"requests_per_run": n, "cpu_us_per_req": medians, "cpu_ratio_to_off": ratios, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--base-root", type=Path, help="also a node from this checkout, as off-base")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tracing.json")
    parser.add_argument("--requests", type=int, default=20000, help="per in-process run")
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # a child of in_process
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out's JSON")
    args = parser.parse_args()
    if args.drive is not None:
        drive(args.drive, args.requests)
        return
    if args.plot_only:
        plot(json.loads(args.out.read_text())["results"], args.out.with_suffix(".png"))
        return
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
        receiver = OtlpReceiver(Path(tmp)).start()
        traced = {"MODELCACHE_TRACING": "true", **receiver.endpoint("http/protobuf")}
        servers = {}
        try:
            servers["off"] = start_node(ROOT, registry.root, {})
            servers["on"] = start_node(ROOT, registry.root, traced)
            none = {**traced, "OTEL_TRACES_SAMPLER_ARG": "0"}
            servers["on-none"] = start_node(ROOT, registry.root, none)
            every = {**traced, "OTEL_TRACES_SAMPLER": "always_on"}
            servers["on-all"] = start_node(ROOT, registry.root, every)
            if args.base_root:
                servers["off-base"] = start_node(args.base_root.resolve(), registry.root, {})
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
                            proc, url = servers[name]
                            r = run_wrk(url + path, scripts[ep], conns, args.duration, proc.pid)
                            runs.setdefault(f"{ep}@{conns}", {}).setdefault(name, []).append(r)
                            print(f"rep {rep} {ep}@{conns} {name}: {r}", file=sys.stderr)
            spans = len(receiver.spans())
            for _proc, _url in servers.values():
                stop_process(_proc)  # the machine to the in-process runs alone
            measured = in_process(registry.root, receiver, args.reps, args.requests)
        finally:
            for proc, _url in servers.values():
                stop_process(proc)
            receiver.stop()
    results = {key: summarise(by_server) for key, by_server in runs.items()}
    model = {
        key: {
            "fixed_us_per_req": round(r["on-none"]["cpu_us_per_req"] - r["off"]["cpu_us_per_req"], 1),
            "recorded_us_per_req": round(r["on-all"]["cpu_us_per_req"] - r["off"]["cpu_us_per_req"], 1),
            "predicted_cpu_ratio_at_default": round(
                r["on-none"]["cpu_ratio_to_off"] + DEFAULT_RATIO * (r["on-all"]["cpu_ratio_to_off"] - 1), 3
            ),
        }
        for key, r in results.items()
    }
    report(
        str(args.out),
        {
            "method": f"wrk, {args.reps} interleaved reps x {args.duration}s per point; medians; "
            "no traceparent sent (the node's sampler decides)",
            "model": f"{MODEL} {meta.version} ({meta.size_bytes} bytes)",
            "default_sampler": f"parent-based, {DEFAULT_RATIO:g} of new traces (node.otel.DEFAULT_RATIO)",
            "spans_received": spans,
            "worst_throughput_ratio_on_to_off": min(r["on"]["ratio_to_off"] for r in results.values()),
            "worst_cpu_ratio_on_to_off": max(r["on"]["cpu_ratio_to_off"] for r in results.values()),
            "cost_model": model,
            "in_process": measured,
            "results": results,
            "runs": runs,
        },
    )
    try:
        plot(results, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
