"""Start time: spawn -> /readyz 200 of an empty node, and a restart holding 3 small models.

    python benchmarks/bench_start.py [--runs 7] [--base-root DIR] [--out benchmarks/results/start.json]

Real node processes (`python -m node`, default settings: gRPC on, no warm-up), timed from just
before the spawn to the first `/readyz` 200 (polled every 10 ms), medians of `--runs` runs with
the contenders interleaved run by run, so a busy machine slows them alike:

* `empty`: a node with nothing to restore; then the first prediction right after ready (it
  loads a model; on this code it may also wait for the model libraries the node imports once
  ready), so "spawn -> first answer" is reported too. Standalone, and with Redis.
* `restart`: a node that served 3 small models (a few requests each) is stopped with SIGTERM
  and started again, with and without `MODELCACHE_STATE_DIR`. Reported: spawn -> ready, how
  many of the 3 models were cached at that moment, and spawn -> all 3 answered (one request
  each after ready: without the state each one is a load).

`--base-root` adds the same scenarios for another checkout (e.g. the code before this work:
`git archive <commit> | tar -x -C DIR`), run side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, report

from coordinator.processes import free_port, stop_process
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from testkit.model_files import train_booster

MODELS = ("churn", "fraud", "ltv")
ROW = [0.1, 0.2, 0.3, 0.4]


def publish_small_models(registry: Registry, scratch: Path) -> None:
    for i, model_type in enumerate(MODELS):
        path = scratch / f"{model_type}.ubj"
        train_booster(i, 20, len(ROW), "binary:logistic").save_model(path)
        registry.publish(path, model_type, "1.0.0", features=[f"f{j}" for j in range(len(ROW))])


class Node:
    """One node process of one checkout, timed from spawn."""

    def __init__(self, code: Path, registry: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "MODELCACHE_REGISTRY": str(registry),
            "MODELCACHE_LOG_LEVEL": "warning",
            **env,
        }
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--port", str(self.port)],
            env=env,
            cwd=code,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(timeout=60)

    def wait_ready(self) -> float:
        """Seconds from spawn to the first /readyz 200."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}")
            try:
                if self.client.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - self.spawned
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise RuntimeError("node not ready within 60 s")

    def predict(self, model_type: str) -> dict[str, Any]:
        r = self.client.post(f"{self.url}/api/v1/models/{model_type}/predict", json={"features": ROW})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def cached(self) -> int:
        return int(self.client.get(f"{self.url}/api/v1/cache/stats").json()["cached_models"])

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)  # SIGTERM: a node with a state dir saves on the way out


def empty_run(code: Path, registry: Path, env: dict[str, str]) -> dict[str, float]:
    node = Node(code, registry, env)
    try:
        ready = node.wait_ready()
        node.predict(MODELS[0])
        return {"ready_s": ready, "first_answer_s": time.perf_counter() - node.spawned}
    finally:
        node.stop()


def restart_run(code: Path, registry: Path, state_dir: Path | None) -> dict[str, float]:
    env = {"MODELCACHE_NODE_ID": "bench-restart"}
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
        env["MODELCACHE_STATE_DIR"] = str(state_dir)
    first = Node(code, registry, env)
    try:
        first.wait_ready()
        for model_type in MODELS:
            for _ in range(3):
                first.predict(model_type)
    finally:
        first.stop()
    node = Node(code, registry, env)
    try:
        ready = node.wait_ready()
        cached = node.cached()
        hits = sum(node.predict(model_type)["cached"] for model_type in MODELS)
        return {
            "ready_s": ready,
            "cached_at_ready": cached,
            "all_answered_s": time.perf_counter() - node.spawned,
            "hits_of_3": hits,
        }
    finally:
        node.stop()


def median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--base-root", type=Path, help="another checkout to run side by side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "start.json"))
    args = parser.parse_args()
    codes = {"this": ROOT} | ({"base": args.base_root.resolve()} if args.base_root else {})

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        scratch = Path(tmp)
        registry = Registry(scratch / "registry")
        publish_small_models(registry, scratch)
        cases: dict[str, Any] = {}
        for name in codes:
            cases[f"{name}: empty"] = lambda c=codes[name]: empty_run(c, registry.root, {})
            cases[f"{name}: empty, with Redis"] = lambda c=codes[name]: empty_run(
                c,
                registry.root,
                {"MODELCACHE_REDIS_URL": redis.url, "MODELCACHE_REDIS_PREFIX": f"b{time.time_ns()}:"},
            )
            cases[f"{name}: restart"] = lambda c=codes[name]: restart_run(c, registry.root, None)
        cases["this: restart, MODELCACHE_STATE_DIR"] = lambda: restart_run(
            ROOT, registry.root, scratch / "state"
        )
        runs: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
        for i in range(args.runs):
            for case, run in cases.items():
                runs[case].append(run())
            print(
                f"run {i + 1}/{args.runs}: " + ", ".join(f"{c} {runs[c][-1]['ready_s']:.2f}s" for c in cases)
            )
    medians = {case: median(rows) for case, rows in runs.items()}
    result: dict[str, Any] = {
        "runs": args.runs,
        "load_average_at_end": os.getloadavg()[0],
        "median": medians,
        "raw": runs,
    }
    if "base: empty" in medians:
        result["empty_ready_ratio_this_to_base"] = round(
            medians["this: empty"]["ready_s"] / medians["base: empty"]["ready_s"], 3
        )
    result["restart_ready_with_state_to_without"] = round(
        medians["this: restart, MODELCACHE_STATE_DIR"]["ready_s"]
        / medians["this: restart"]["all_answered_s"],
        3,
    )
    report(args.out, result)
    plot(medians, Path(args.out).with_suffix(".png"))


def plot(medians: dict[str, dict[str, float]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'modelcache[bench]'): no plot")
        return
    # Each scenario's contenders side by side: this code, the other checkout, then the state dir.
    names = sorted(medians, key=lambda n: (n.split(": ", 1)[1].split(",")[0], "STATE_DIR" in n, n))
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ys = range(len(names))
    ready = [medians[n]["ready_s"] for n in names]
    after = [medians[n].get("first_answer_s", medians[n].get("all_answered_s", 0.0)) for n in names]
    ax.barh(ys, after, color="#c7d7ea", label="spawn -> first answer (empty) / all 3 answered (restart)")
    ax.barh(ys, ready, color="#3b6ea8", label="spawn -> /readyz 200")
    for y, (r, a) in enumerate(zip(ready, after, strict=True)):
        ax.text(a + 0.03, y, f"{r:.2f} s ready, {a:.2f} s answered", va="center", fontsize=8)
    ax.axvline(1.0, color="#888", ls=":", lw=1)
    ax.axvline(3.0, color="#888", ls="--", lw=1)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from spawn (median); dotted: 1 s empty-node target, dashed: 3 s restart target")
    ax.set_title("Node start: empty, and a restart holding 3 small models")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax.set_xlim(0, max(after) * 1.45)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
