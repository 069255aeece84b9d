"""node.runtimes.xgboost: what the XGBoost runtime adds beyond the shared contract (test_serving.py)."""

from __future__ import annotations

import gc
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xgboost as xgb

from node.memory import trim
from node.runtimes.xgboost import load


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_serialising_boosters_on_a_long_lived_thread_keeps_no_buffer_after_them() -> None:
    # As the batcher does for heavy predict workers: boosters loaded and freed on one thread,
    # serialised on a pool thread that outlives them. XGBoost's save_raw buffer is kept per
    # thread until the booster is freed on that thread: ~0.4 MB a booster here.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x, label=x[:, 0] > 0), num_boost_round=400)
    raw = bytes(booster.save_raw("ubj"))
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(load(raw).to_ubj).result()  # the pool thread and XGBoost's own state exist
        gc.collect()
        trim()
        before = _rss_mb()
        alive: deque[object] = deque(maxlen=6)  # several at once: a new one seldom reuses an address
        for _ in range(300):
            adapter = load(raw)
            assert pool.submit(adapter.to_ubj).result() == raw
            alive.append(adapter)
        alive.clear()
        gc.collect()
        trim()
        grown = _rss_mb() - before

    finally:
        pool.shutdown()
    assert grown < 0.1 * 300 * len(raw) / 2**20, f"{grown:.0f} MB kept after 300 boosters"
