"""What the benchmarks share: real node processes on free loopback ports, and the machine line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.processes import free_port, stop_process  # noqa: E402
from testkit.model_files import write_slow_model as write_slow_model  # noqa: E402

Node = tuple[subprocess.Popen[bytes], str]

WRK_RESULT_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
"""The end of a wrk Lua script (to be %-formatted with it): one `RESULT {json}` line with
requests, duration, errors and p50/p99 in microseconds, which the benchmarks parse."""


def start_nodes(
    registry: Path, n: int = 1, redis_url: str | None = None, env: dict[str, str] | None = None
) -> list[Node]:
    """Start `n` nodes (`python -m node`, with `env` on top) and wait until each is ready."""
    nodes = []
    for _ in range(n):
        port = free_port()
        # Its own dict per node: reusing `env` carried the first node's id into every node.
        node_env = {
            **os.environ,
            "MODELCACHE_REGISTRY": str(registry),
            "MODELCACHE_LOG_LEVEL": "warning",
            "MODELCACHE_NODE_ID": f"node-{port}",
            **(env or {}),
        }
        if redis_url:
            node_env["MODELCACHE_REDIS_URL"] = redis_url
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--port", str(port)],
            env=node_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nodes.append((proc, f"http://127.0.0.1:{port}"))
    for proc, url in nodes:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {url} did not start")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    for proc, _ in nodes:
        stop_process(proc)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(out: str, result: dict[str, object]) -> None:
    """Print the result and write it as JSON (with the machine it was taken on)."""
    result = {"machine": machine(), **result}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
