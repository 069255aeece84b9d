"""Eviction policies on request traces of models with heterogeneous sizes and load times.

    python benchmarks/bench_policies.py [--requests 20000] [--slots 4 8 16] [--seed 0]

Pure caches (node.policies), replayed in-process: every policy sees the identical
seeded sequence. A miss costs the model's load time (the node measures it; here it
is the model's fixed figure), so besides the hit ratio each policy is charged
load-seconds, the time the node would spend loading.

Models (`catalogue`): 60 models whose resident sizes are log-uniform over
1-1,000 MB and whose load times follow size x a format factor (a JSON model
loads ~10x slower than a binary one) with noise: 0.01 s to ~14 s with the
default seed, a spread of over 1,000x.

Traces:
- `zipf`: Zipf(1.0) popularity, the baseline;
- `scans`: a hot Zipf set of 1.5x the cache's slots, and after every 3x slots
  hot requests a sweep of 2x slots cold models (a batch job walking the
  catalogue; 40% of requests): the scan-heavy case, a working set about the
  cache's size that scans keep flushing;
- `shifting`: Zipf whose ranking is reshuffled every 2,000 requests;
- `mixed`: Zipf with shifts and scans, over the heterogeneous load times: the
  case the cost policy is for.

Policies: lru, lfu, arc, cost, plus two offline yardsticks that see the future:
`belady` (evict the model used again furthest in the future: optimal hit ratio
for equal sizes) and `belady-cost` (evict the largest next-use distance x share
/ load time: the cost- and size-aware MIN heuristic of Belady-Size, not
provably optimal; optimal offline caching with sizes and costs is NP-hard).
Bounds: count (`slots`), and count + bytes (`slots` x `--mb-per-slot`, default 100 MB).

Also checks the online hit-ratio curve (node.curve) on the zipf trace: its
estimates at 1x, 2x, 4x the slots against caches of those sizes.

Writes benchmarks/results/policies.json and policies.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.curve import HitRatioCurve  # noqa: E402
from node.policies import POLICIES, make_policy  # noqa: E402

MB = 1 << 20
ONLINE = list(POLICIES)  # lru, lfu, arc, cost
OFFLINE = ["belady", "belady-cost"]


@dataclass(frozen=True)
class Model:
    name: str
    bytes: int
    load_s: float


def catalogue(n: int, rng: np.random.Generator) -> dict[str, Model]:
    sizes_mb = np.exp(rng.uniform(np.log(1), np.log(1000), size=n))
    per_mb = np.where(rng.random(n) < 0.3, 0.02, 0.002)  # 30% JSON-like: ~10x slower per MB
    load_s = np.clip(sizes_mb * per_mb * rng.lognormal(0, 0.3, size=n), 0.01, None)
    return {f"m{i}": Model(f"m{i}", int(sizes_mb[i] * MB), float(load_s[i])) for i in range(n)}


def zipf_ranks(rng: np.random.Generator, n: int, size: int, s: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=weights / weights.sum())


def trace_zipf(n: int, rng: np.random.Generator, models: int, slots: int) -> list[str]:
    # Popularity independent of size and load time: rank r is a random model.
    perm = rng.permutation(models)
    return [f"m{perm[r]}" for r in zipf_ranks(rng, models, n)]


def trace_scans(n: int, rng: np.random.Generator, models: int, slots: int) -> list[str]:
    perm = rng.permutation(models)
    hot, cold = perm[: int(1.5 * slots)], perm[int(1.5 * slots) :]
    out: list[str] = []
    cursor = 0
    for i, r in enumerate(zipf_ranks(rng, len(hot), n)):
        if len(out) >= n:
            break
        if i and i % (3 * slots) == 0:
            for _ in range(2 * slots):
                out.append(f"m{cold[cursor % len(cold)]}")
                cursor += 1
        out.append(f"m{hot[r]}")
    return out[:n]


def trace_shifting(n: int, rng: np.random.Generator, models: int, slots: int) -> list[str]:
    out: list[str] = []
    perm = rng.permutation(models)
    for i, r in enumerate(zipf_ranks(rng, models, n)):
        if i and i % 2000 == 0:
            perm = rng.permutation(models)
        out.append(f"m{perm[r]}")
    return out


def trace_mixed(n: int, rng: np.random.Generator, models: int, slots: int) -> list[str]:
    # Zipf with a partial reshuffle every 3,000 requests and a scan of 15 every 250.
    out: list[str] = []
    perm = rng.permutation(models)
    cursor = 0
    for i, r in enumerate(zipf_ranks(rng, models, n)):
        if len(out) >= n:
            break
        if i and i % 3000 == 0:
            moved = rng.choice(models, size=models // 4, replace=False)
            perm[moved] = perm[rng.permutation(moved)]
        if i and i % 250 == 0:
            for _ in range(15):
                out.append(f"m{(cursor * 7) % models}")
                cursor += 1
        out.append(f"m{perm[r]}")
    return out[:n]


TRACES: dict[str, Callable[[int, np.random.Generator, int, int], list[str]]] = {
    "zipf": trace_zipf,
    "scans": trace_scans,
    "shifting": trace_shifting,
    "mixed": trace_mixed,
}


@dataclass
class Result:
    hits: int = 0
    lookups: int = 0
    load_s: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"hit_ratio": round(self.hits / self.lookups, 4), "load_s": round(self.load_s, 1)}


def replay_online(
    policy: str, trace: list[str], models: dict[str, Model], slots: int, max_bytes: int | None
) -> Result:
    cache = make_policy(policy, slots, max_bytes)
    out = Result()
    for key in trace:
        out.lookups += 1
        if cache.get(key) is not None:
            out.hits += 1
            continue
        m = models[key]
        out.load_s += m.load_s
        cache.put(key, True, m.bytes, load_s=m.load_s)
    return out


def next_uses(trace: list[str]) -> list[int]:
    """For each position, the position of the same key's next request (len(trace) when none)."""
    nxt, seen = [0] * len(trace), {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(trace[i], len(trace))
        seen[trace[i]] = i
    return nxt


def replay_offline(
    kind: str, trace: list[str], models: dict[str, Model], slots: int, max_bytes: int | None, nxt: list[int]
) -> Result:
    resident: dict[str, int] = {}  # key -> its next use
    used = 0
    out = Result()
    horizon = len(trace)

    def badness(key: str, now: int) -> float:
        distance = resident[key] - now if resident[key] < horizon else 10.0 * horizon
        if kind == "belady":
            return distance
        m = models[key]
        share = max(1 / slots, m.bytes / max_bytes if max_bytes else 0.0)
        return distance * share / m.load_s

    for i, key in enumerate(trace):
        out.lookups += 1
        if key in resident:
            out.hits += 1
            resident[key] = nxt[i]
            continue
        m = models[key]
        out.load_s += m.load_s
        while resident and (
            len(resident) + 1 > slots or (max_bytes is not None and used + m.bytes > max_bytes)
        ):
            victim = max(resident, key=lambda k: badness(k, i))
            used -= models[victim].bytes
            del resident[victim]
        resident[key] = nxt[i]
        used += m.bytes
    return out


def curve_check(trace: list[str], models: dict[str, Model], slots: int) -> list[dict[str, float]]:
    """The online curve's estimate at 1x, 2x, 4x against caches of those sizes, per policy.

    Fed as ModelCache feeds it: every lookup, then each load's bytes and load time.
    """
    rows = []
    for policy in ONLINE:
        node = make_policy(policy, slots)
        curve: HitRatioCurve[str] = HitRatioCurve(policy, slots)
        for key in trace:
            curve.record(key)
            if node.get(key) is None:
                m = models[key]
                node.put(key, True, m.bytes, load_s=m.load_s)
                curve.learn(key, m.bytes, m.load_s)
        for point in curve.points():
            truth = replay_online(policy, trace, models, point.capacity, None)
            measured = truth.hits / truth.lookups
            rows.append(
                {
                    "policy": policy,
                    "capacity": point.capacity,
                    "estimate": round(point.hit_ratio, 4),
                    "measured": round(measured, 4),
                    "error": round(abs(point.hit_ratio - measured), 4),
                }
            )
    return rows


def runs(args: argparse.Namespace) -> Iterator[dict]:
    rng = np.random.default_rng(args.seed)
    models = catalogue(args.models, rng)
    for name, make in TRACES.items():
        for slots in args.slots:
            trace = make(args.requests, np.random.default_rng([args.seed, len(name)]), args.models, slots)
            nxt = next_uses(trace)
            for bound in ("count", "bytes"):
                max_bytes = slots * args.mb_per_slot * MB if bound == "bytes" else None
                row: dict = {"trace": name, "bound": bound, "slots": slots, "max_bytes": max_bytes}
                for policy in ONLINE:
                    row[policy] = replay_online(policy, trace, models, slots, max_bytes).to_json()
                for kind in OFFLINE:
                    row[kind] = replay_offline(kind, trace, models, slots, max_bytes, nxt).to_json()
                yield row


def targets(rows: list[dict]) -> dict[str, dict]:
    """The issue's targets as ratios measured in this run (count bound, every slot count)."""
    count = [r for r in rows if r["bound"] == "count"]
    cost_ratio = {
        r["slots"]: round(r["cost"]["load_s"] / r["lru"]["load_s"], 3) for r in count if r["trace"] == "mixed"
    }
    arc_gain = {
        r["slots"]: round(r["arc"]["hit_ratio"] - r["lru"]["hit_ratio"], 3)
        for r in count
        if r["trace"] == "scans"
    }
    return {
        "cost_load_s_over_lru_on_mixed": {
            "by_slots": cost_ratio,
            "target": "<= 0.6",
            "met": all(v <= 0.6 for v in cost_ratio.values()),
        },
        "arc_hit_ratio_minus_lru_on_scans": {
            "by_slots": arc_gain,
            "target": ">= 0.1",
            "met": all(v >= 0.1 for v in arc_gain.values()),
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = [r for r in rows if r["bound"] == "count"]
    fig, axes = plt.subplots(2, len(TRACES), figsize=(4 * len(TRACES), 6.5), sharex=True)
    for col, name in enumerate(TRACES):
        mine = [r for r in count if r["trace"] == name]
        slots = [r["slots"] for r in mine]
        for policy in ONLINE + OFFLINE:
            style = "--" if policy in OFFLINE else "-"
            axes[0][col].plot(slots, [r[policy]["hit_ratio"] for r in mine], style, marker="o", label=policy)
            rel = [r[policy]["load_s"] / r["lru"]["load_s"] for r in mine]
            axes[1][col].plot(slots, rel, style, marker="o", label=policy)
        axes[0][col].set_title("scans (hot set 1.5x slots)" if name == "scans" else name)
        axes[1][col].set_xlabel("cache slots")
        axes[1][col].set_xscale("log", base=2)
    axes[0][0].set_ylabel("hit ratio")
    axes[1][0].set_ylabel("load-seconds / LRU's")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--slots", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--models", type=int, default=60)
    parser.add_argument("--mb-per-slot", type=int, default=100, help="byte budget per slot in the bytes runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = list(runs(args))
    names = ONLINE + OFFLINE
    print(f"{'trace':<9} {'bound':<5} {'slots':>5}  hit ratio: " + " ".join(f"{p:>11}" for p in names))
    for r in rows:
        hr = " ".join(f"{r[p]['hit_ratio']:>11.3f}" for p in names)
        ls = " ".join(f"{r[p]['load_s']:>11.0f}" for p in names)
        print(f"{r['trace']:<9} {r['bound']:<5} {r['slots']:>5}  hit ratio: {hr}")
        print(f"{'':<9} {'':<5} {'':>5}  load-s:    {ls}")
    models = catalogue(args.models, np.random.default_rng(args.seed))
    zipf = trace_zipf(args.requests, np.random.default_rng([args.seed, 4]), args.models, args.slots[0])
    curve = curve_check(zipf, models, args.slots[0])
    print("hit-ratio curve (zipf):", json.dumps(curve))
    met = targets(rows)
    print("targets:", json.dumps(met))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"args": vars(args), "results": rows, "curve": curve, "targets": met}
    (out / "policies.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(rows, out / "policies.png")


if __name__ == "__main__":
    main()
