"""Load throughput from a local S3-compatible server against the same bytes from disk, and the disk tier.

    python benchmarks/bench_store.py [--sizes-mib 1 16 64] [--reps 5]

For each artifact size, the time `Loader.read_verified` takes (read + SHA-256, what
every load does before deserializing) through three paths, side by side in one run:

- `disk`: the filesystem registry (page cache warm: the best case for disk);
- `s3`: the object-store registry without a disk tier, from moto's server process
  over loopback HTTP (a Python server: a floor for what MinIO or S3 would give);
- `tier_hit`: the object-store registry whose disk tier holds the artifact.

Medians of `--reps`, as MiB/s and as ratios to `disk`, written to
`benchmarks/results/store.json` (and `store.png` when matplotlib is present).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT, report

sys.path.insert(0, str(ROOT))

from coordinator.registry import ObjectStoreRegistry, Registry, StoreLocation
from coordinator.registry.disk_tier import DiskTier
from node.loader import Loader
from testkit.s3_server import BUCKET, S3Server, create_bucket


def median_s(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/store.json"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        server = S3Server(work / "moto.log").start()
        try:
            create_bucket(server.url)
            os.environ.update(server.env())
            location = StoreLocation.parse(f"s3://{BUCKET}/bench")
            disk = Registry(work / "registry")
            store = ObjectStoreRegistry(location)
            tiered = ObjectStoreRegistry(location, disk_tier=DiskTier(work / "tier", 1 << 40))
            for mib in args.sizes_mib:
                artifact = work / f"model-{mib}.joblib"
                artifact.write_bytes(os.urandom(mib << 20))
                version = f"{mib}.0"
                disk.publish(artifact, "m", version)
                meta = store.publish(artifact, "m", version)
                tiered.read_artifact(meta)  # fills the tier
                times = {
                    "disk": median_s(lambda v=version: Loader(disk).verify("m", v), args.reps),
                    "s3": median_s(lambda m=meta: Loader(store).read_verified(m), args.reps),
                    "tier_hit": median_s(lambda m=meta: Loader(tiered).read_verified(m), args.reps),
                }
                rows.append(
                    {
                        "size_mib": mib,
                        **{f"{k}_mib_per_s": round(mib / t, 1) for k, t in times.items()},
                        **{f"{k}_ms": round(t * 1000, 2) for k, t in times.items()},
                        "s3_vs_disk": round(times["s3"] / times["disk"], 2),
                        "tier_hit_vs_disk": round(times["tier_hit"] / times["disk"], 2),
                    }
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    report(args.out, {"reps": args.reps, "rows": rows})
    _plot(rows, Path(args.out).with_suffix(".png"))


def _plot(rows: list[dict[str, float]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["size_mib"] for r in rows]
    for key, label in (
        ("disk", "disk (filesystem registry)"),
        ("s3", "S3 (moto, loopback)"),
        ("tier_hit", "disk tier hit"),
    ):
        ax.plot(sizes, [r[f"{key}_mib_per_s"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("artifact size (MiB)")
    ax.set_ylabel("read + SHA-256 (MiB/s)")
    ax.set_title("Loading an artifact's verified bytes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
