"""What refused work costs a node: /healthz latency while a few clients flood it with batches
over MODELCACHE_MAX_BATCH (but under the body limit), idle vs flooded, per source tree.

    python benchmarks/bench_refusals.py                                  # this tree
    python benchmarks/bench_refusals.py --tree /work/main --tree .       # before and after, one run

Each tree gets its own node (`python -P -m node`, that tree on PYTHONPATH), measured one
after the other in the same run, so the figures compare like with like. Bounded: `--seconds`
of flood per tree, `--clients` connections, then everything started here is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.processes import free_port, stop_process  # noqa: E402

MAX_BATCH = 1000


def over_limit_body(target_bytes: int) -> bytes:
    """A batch of far more rows than MAX_BATCH, just under `target_bytes` (the body limit)."""
    row = b"[1.5,2.25,3,4,5],"
    n = (target_bytes - 64) // len(row)
    return b'{"instances":[' + row * (n - 1) + row[:-1] + b"]}"


def start_node(tree: Path, registry: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "MODELCACHE_REGISTRY": str(registry),
        "MODELCACHE_LOG_LEVEL": "warning",
        "MODELCACHE_MAX_BATCH": str(MAX_BATCH),
        "MODELCACHE_GRPC_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "node", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
    stop_process(proc)
    raise SystemExit(f"node from {tree} did not start")


def healthz_ms(port: int, samples: int, gap_s: float) -> list[float]:
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(samples):
        started = time.perf_counter()
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(gap_s)
    conn.close()
    return out


def flood(port: int, body: bytes, clients: int, seconds: float, refused: Any) -> None:
    """`clients` connections sending `body` back to back for `seconds` (its own process: the
    flood's client work must not hold this process's GIL while /healthz is timed)."""
    stop = time.monotonic() + seconds

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"content-type": "application/json"}
        while time.monotonic() < stop:
            try:
                conn.request("POST", "/api/v1/models/churn/batch_predict", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 413:
                    with refused.get_lock():
                        refused.value += 1
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)


def measure(tree: Path, body: bytes, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as registry:
        proc, port = start_node(tree, Path(registry))
        try:
            healthz_ms(port, 20, 0.01)  # warm up
            idle = healthz_ms(port, args.samples, 0.02)
            refused = multiprocessing.Value("i", 0)
            flooder = multiprocessing.Process(
                target=flood, args=(port, body, args.clients, args.seconds, refused)
            )
            started = time.monotonic()
            flooder.start()
            time.sleep(0.5)  # the flood is under way
            flooded: list[float] = []
            while time.monotonic() - started < args.seconds - 0.5:
                flooded += healthz_ms(port, 10, 0.02)
            flooder.join(60)
            elapsed = time.monotonic() - started
        finally:
            stop_process(proc)
    p50_idle, p50_flood = statistics.median(idle), statistics.median(flooded)
    return {
        "tree": str(tree),
        "healthz_p50_ms_idle": round(p50_idle, 2),
        "healthz_p50_ms_flooded": round(p50_flood, 2),
        "healthz_p95_ms_flooded": round(statistics.quantiles(flooded, n=20)[-1], 2),
        "flooded_over_idle": round(p50_flood / p50_idle, 1),
        "refusals_per_s": round(refused.value / elapsed, 1),
        "healthz_samples": len(flooded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", type=Path, help="source tree (repeat); default this one")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--body-bytes", type=int, default=1_000_000, help="under MAX_BODY_BYTES (1 MiB)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    body = over_limit_body(args.body_bytes)
    rows = body.count(b"[") - 1
    print(f"body: {len(body)} bytes, {rows} rows (MAX_BATCH {MAX_BATCH}), {args.clients} clients", flush=True)
    results = []
    for tree in args.tree or [ROOT]:
        result = measure(tree.resolve(), body, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "body_bytes": len(body), "results": results}, indent=2))


if __name__ == "__main__":
    main()
