"""Hit rates of the eviction policies on the same request traces (in-process, pure caches).

    python benchmarks/bench_policies.py [--requests 20000] [--slots 3 5 10]

Traces (seeded, so every policy sees the identical sequence):
- `zipf+scans`: 50 model types with Zipf(1.1) popularity; every 500 requests a
  scan of 8 one-off models (each requested once, never again).
- `shifting`: Zipf(1.1) over 50 types whose ranking is reshuffled every 4,000
  requests (yesterday's hot model goes cold).
- `zipf`: plain Zipf(1.1), the baseline.
Writes benchmarks/results/policies.json and policies.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.policies import POLICIES  # noqa: E402


def zipf_ranks(rng: np.random.Generator, n: int, size: int, s: float = 1.1) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=weights / weights.sum())


def trace_zipf(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"m{r}" for r in zipf_ranks(rng, 50, n)]


def trace_zipf_scans(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    one_off = 0
    for i, r in enumerate(zipf_ranks(rng, 50, n)):
        if i and i % 500 == 0:
            for _ in range(8):
                out.append(f"once{one_off}")
                one_off += 1
        out.append(f"m{r}")
    return out


def trace_shifting(n: int, seed: int = 2) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    perm = rng.permutation(50)
    for i, r in enumerate(zipf_ranks(rng, 50, n)):
        if i and i % 4000 == 0:
            perm = rng.permutation(50)
        out.append(f"m{perm[r]}")
    return out


TRACES = {"zipf+scans": trace_zipf_scans, "shifting": trace_shifting, "zipf": trace_zipf}


def replay(policy: str, slots: int, trace: list[str]) -> float:
    cache = POLICIES[policy](slots)
    hits = 0
    for key in trace:
        if cache.get(key) is not None:
            hits += 1
        else:
            cache.put(key, key, 1)
    return hits / len(trace)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--slots", type=int, nargs="+", default=[3, 5, 10])
    args = parser.parse_args()
    rows = []
    for name, make in TRACES.items():
        trace = make(args.requests)
        for slots in args.slots:
            row = {"trace": name, "slots": slots, "requests": len(trace)}
            row |= {policy: round(replay(policy, slots, trace), 4) for policy in POLICIES}
            rows.append(row)
    print(f"{'trace':<12} {'slots':>5} " + " ".join(f"{p:>7}" for p in POLICIES))
    for row in rows:
        print(f"{row['trace']:<12} {row['slots']:>5} " + " ".join(f"{row[p]:>7.3f}" for p in POLICIES))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "policies.json").write_text(json.dumps({"args": vars(args), "hit_rates": rows}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRACES), figsize=(4 * len(TRACES), 3.5), sharey=True)
    for ax, name in zip(axes, TRACES, strict=True):
        for policy in POLICIES:
            points = [(r["slots"], r[policy]) for r in rows if r["trace"] == name]
            ax.plot(*zip(*points, strict=True), marker="o", label=policy)
        ax.set_title(name)
        ax.set_xlabel("cache slots")
    axes[0].set_ylabel("hit rate")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "policies.png", dpi=100)


if __name__ == "__main__":
    main()
