"""Where one request's time goes in a node: py-spy samples under wrk load, summarised.

    python benchmarks/profile_node.py [--conns 1] [--seconds 10] [--endpoint v1|v2]

Starts a node on the demo model, drives one endpoint with wrk, samples the
node with `py-spy record` (pip install py-spy) and attributes every sample to
the first matching layer of its stack (innermost first): the XGBoost call,
pydantic, FastAPI's request handling, Starlette/uvicorn, the node's own code,
idle (the event loop waiting). Writes the share of each layer to
`benchmarks/results/profile_node.json` and the raw collapsed stacks beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench_http import ENDPOINTS, LUA, start_node
from common import ROOT, report

from coordinator.demo import publish_demo_models
from coordinator.processes import stop_process
from coordinator.registry import Registry

# (layer, substrings of a frame "function (file:line)"); the innermost matching frame decides.
LAYERS = [
    # uvloop runs the loop in C: samples whose innermost Python frame is asyncio.run
    # are the loop's own C work (epoll wait, socket reads, callbacks' C parts).
    ("idle (event loop waiting)", ("asyncio/runners.py", "concurrent/futures/thread.py")),
    # uvicorn 0.54: httptools_impl.py:524 is `self.transport.write(...)` of the response.
    ("socket write of the response (kernel)", ("httptools_impl.py:524",)),
    ("xgboost predict (C call + its Python wrapper)", ("xgboost/", "__call__ (node/runtime")),
    ("node runtime (matrix, outputs)", ("node/runtime.py",)),
    ("node service + cache lookup", ("node/service.py", "node/cache.py")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("pydantic validation/serialisation", ("pydantic",)),
    ("orjson / json", ("orjson", "json/")),
    ("node HTTP layer", ("node/http/", "node/tensors.py")),
    ("fastapi request handling", ("fastapi/",)),
    ("starlette (routing, middleware, responses)", ("starlette/",)),
    ("uvicorn/httptools protocol", ("uvicorn/", "httptools")),
    ("asyncio machinery", ("asyncio/", "uvloop")),
]


def classify(stack: str) -> str:
    frames = [f.replace(str(ROOT) + "/", "") for f in stack.split(";")]
    for frame in reversed(frames):
        for layer, needles in LAYERS:
            if any(n in frame for n in needles):
                return layer
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--endpoint", choices=list(ENDPOINTS), default="v1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_node.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        publish_demo_models(registry)
        path, body = ENDPOINTS[args.endpoint]
        script = Path(tmp) / "body.lua"
        script.write_text(LUA % json.dumps(body))
        proc, url = start_node(ROOT, registry.root)
        raw = args.out.with_suffix(".collapsed.txt")
        try:
            py_spy = str(Path(sys.executable).with_name("py-spy"))  # installed beside this Python
            spy_cmd = [py_spy, "record", "--pid", str(proc.pid), "--rate", "1000"]
            spy_cmd += ["--duration", str(args.seconds), "--format", "raw", "--output", str(raw)]
            spy = subprocess.Popen(
                spy_cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wrk = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s", "-s", str(script), url + path]
            out = subprocess.run(wrk, capture_output=True, text=True, check=True).stdout
            spy.wait(args.seconds + 30)
        finally:
            stop_process(proc)
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples[classify(stack)] += int(count)
    total = sum(samples.values())
    busy = total - samples["idle (event loop waiting)"]
    result = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    report(
        str(args.out),
        {
            "endpoint": path,
            "connections": args.conns,
            "wrk": json.loads(result[len("RESULT ") :]),
            "samples": total,
            "share_of_busy_time": {
                k: round(v / busy, 3) for k, v in samples.most_common() if not k.startswith("idle")
            },
            "note": "idle = the loop in C (epoll, socket reads) and idle worker threads",
            "idle_share": round(samples["idle (event loop waiting)"] / total, 3) if total else 0,
        },
    )


if __name__ == "__main__":
    main()
