"""RSS of a real node against its byte budget while churning big JSON and UBJ models.

    python benchmarks/bench_memory.py [--code DIR] [--budget-mb 64] [--models 4] [--rounds 3]

`--code` picks the source tree the node runs (e.g. an older checkout, for a
before/after). Prints and writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import xgboost as xgb
from common import ROOT, free_port, stop_process, write_slow_model  # type: ignore[import-not-found]

MB = 1 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settled_rss(pid: int, timeout_s: float = 20.0) -> int:
    """RSS once it has stopped growing: a ready node still imports its model libraries."""
    deadline = time.monotonic() + timeout_s
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss(pid)
        if now - last < MB:
            return now
        last = now
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fmt", choices=("json", "ubj", "both"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from coordinator.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        registry = Registry(tmp_path / "registry")
        write_slow_model(tmp_path / "big.json", n_trees=1050)  # ~17 MB JSON
        booster = xgb.Booster()
        booster.load_model(tmp_path / "big.json")
        booster.save_model(tmp_path / "big.ubj")
        names = []
        fmts = ("json", "ubj") if args.fmt == "both" else (args.fmt,)
        for i in range(args.models):
            for fmt in fmts:
                registry.publish(tmp_path / f"big.{fmt}", f"{fmt}{i}", "1.0")
                names.append(f"{fmt}{i}")
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(args.code),
            "MODELCACHE_REGISTRY": str(registry.root),
            "MODELCACHE_CACHE_MAX_BYTES": str(args.budget_mb * MB),
            "MODELCACHE_CACHE_SIZE": "20",
            "MODELCACHE_LOG_LEVEL": "warning",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--port", str(port)],
            env=env,
            cwd=args.code,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=120) as c:
                for _ in range(300):
                    try:
                        if c.get(f"{url}/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                idle = settled_rss(proc.pid)
                worst = worst_bytes = 0
                for _ in range(args.rounds):
                    for name in names:
                        r = c.post(f"{url}/api/v1/predict", json={"model_type": name, "features": [0.1] * 4})
                        assert r.status_code == 200, r.text
                        worst = max(worst, rss(proc.pid) - idle)
                        worst_bytes = max(
                            worst_bytes, c.get(f"{url}/api/v1/cache/stats").json()["cache_bytes"]
                        )
                final = rss(proc.pid) - idle
        finally:
            stop_process(proc)
    result = {
        "code": str(args.code),
        "budget_mb": args.budget_mb,
        "models": names,
        "idle_rss_mb": round(idle / MB, 1),
        "worst_rss_growth_mb": round(worst / MB, 1),
        "final_rss_growth_mb": round(final / MB, 1),
        "worst_growth_over_budget": round(worst / (args.budget_mb * MB), 2),
        "worst_cache_bytes_mb": round(worst_bytes / MB, 1),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    runs.append(result)
    args.out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
