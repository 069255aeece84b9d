"""node.runtimes.xgboost: what the XGBoost runtime adds beyond the shared contract (test_serving.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Run in a fresh interpreter: in the suite's long-lived process, what earlier tests allocated
# and freed moves the resident size by tens of MB, more than the leak this measures.
SCENARIO = """
import gc, json, os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xgboost as xgb

from node.memory import trim
from node.runtimes.xgboost import load


def rss_mb():
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
params = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1, "seed": 0}
raw = bytes(xgb.train(params, xgb.DMatrix(x, label=x[:, 0] > 0), num_boost_round=400).save_raw("ubj"))
pool = ThreadPoolExecutor(1)
pool.submit(load(raw).to_ubj).result()  # the pool thread and XGBoost's own state exist
gc.collect()
trim()
before = rss_mb()
alive = deque(maxlen=6)  # several at once: a new booster seldom reuses a freed one's address
for _ in range(300):
    adapter = load(raw)
    assert pool.submit(adapter.to_ubj).result() == raw
    alive.append(adapter)
alive.clear()
del adapter
gc.collect()
trim()
print(json.dumps({"grown_mb": rss_mb() - before, "serialised_mb": 300 * len(raw) / 2**20}))
"""


def test_serialising_boosters_on_a_long_lived_thread_keeps_no_buffer_after_them() -> None:
    # As the batcher does for heavy predict workers: boosters loaded and freed on one thread,
    # serialised on a pool thread that outlives them. XGBoost keeps save_raw's buffer per thread
    # until the booster is freed on that thread: ~0.3 MB a booster here, unless to_ubj
    # serialises on a thread of its own (measured: 2 MB kept of 88 with it, 22-37 without).
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    grown, serialised = measured["grown_mb"], measured["serialised_mb"]
    assert grown < 0.1 * serialised, f"{grown:.0f} MB kept after serialising {serialised:.0f} MB"
