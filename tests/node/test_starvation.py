"""node.starvation: a heavy model starved under SCHED_IDLE moves to nice +10, and back when the CPU frees.

The rule on its own (wall and CPU times given), then through the batcher on the real
kernel: a busy-looping process shares the one CPU the test pins itself to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from coordinator.processes import stop_process
from coordinator.registry import Registry
from node.batching import Batcher
from node.metrics import NodeMetrics
from node.priority import thread_priority
from node.runtime import LoadedModel, Predictions, deserialize
from node.starvation import StarvationGuard
from tests.helpers import PublishFn

KEY = ("big", "1")


def test_a_predict_given_under_a_tenth_of_a_cpu_under_sched_idle_is_starved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = StarvationGuard()
    guard.observe(KEY, wall_s=0.030, cpu_s=0.020)  # contended a little: fine
    guard.observe(KEY, wall_s=0.060, cpu_s=0.005)  # 12x its CPU time, and 55 ms of waiting
    assert guard.starved(KEY) and guard.events == 1
    assert "model big 1 is starved under SCHED_IDLE (a predict got 8% of a CPU over 60 ms)" in caplog.text


@pytest.mark.parametrize(
    ("wall_s", "cpu_s"),
    [
        (0.020, 0.020),  # all of a CPU
        (0.19, 0.020),  # 9.5x: above a tenth of a CPU
        (0.045, 0.001),  # 45x, but 44 ms of waiting: scheduling noise of a short predict
    ],
)
def test_a_predict_given_enough_cpu_or_waiting_briefly_is_not_starved(wall_s: float, cpu_s: float) -> None:
    guard = StarvationGuard()
    guard.observe(KEY, wall_s, cpu_s)
    assert not guard.starved(KEY) and guard.events == 0


def test_a_starved_model_goes_back_to_sched_idle_once_a_predict_at_nice_gets_half_a_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelcache.batching")
    guard = StarvationGuard()
    guard.observe(KEY, wall_s=1.0, cpu_s=0.02)
    guard.observe(KEY, wall_s=0.2, cpu_s=0.02)  # at nice +10, still contended (10%): stays
    assert guard.starved(KEY)
    guard.observe(KEY, wall_s=0.03, cpu_s=0.02)  # room again
    assert not guard.starved(KEY)
    assert guard.events == 1 and not guard.starved(("other", "1"))
    assert "model big 1 is no longer starved" in caplog.text


class Burner:
    """An adapter whose predict burns `cost_s` of CPU; records each call's (policy, nice)."""

    def __init__(self, real: Any, cost_s: float) -> None:
        self.real, self.cost_s = real, cost_s
        self.task, self.n_features = real.task, real.n_features
        self.seen: list[tuple[str, int]] = []

    def predict(self, x: np.ndarray) -> Predictions:
        self.seen.append(thread_priority())
        end = time.thread_time() + self.cost_s
        while time.thread_time() < end:
            pass
        return self.real.predict(x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_a_heavy_model_starved_by_a_busy_process_runs_at_nice_until_the_cpu_is_free(
    registry: Registry, publish: PublishFn
) -> None:
    meta = publish("big", "1")
    real = deserialize(meta, registry.artifact_path(meta).read_bytes())
    adapter = Burner(real.adapter, 0.004)
    big = LoadedModel(meta, adapter)
    metrics = NodeMetrics()
    cpu = min(os.sched_getaffinity(0))
    affinity = os.sched_getaffinity(0)
    row = [[0.1, 0.2, 0.3, 0.4]]
    hog: subprocess.Popen[bytes] | None = None
    # The test and the threads it starts (they inherit it) share one CPU with the busy process.
    os.sched_setaffinity(0, {cpu})
    try:
        batcher = Batcher(64, metrics, heavy_predict_s=0.002, heavy_nice=10)
        base = thread_priority()

        async def predict() -> None:
            await batcher.predict(KEY, big, row)

        asyncio.run(predict())  # cost unknown yet: on the loop; now it is heavy
        asyncio.run(predict())  # on the idle pool, no contention: not starved
        assert adapter.seen[-1][0] == "idle" and not batcher._guard.starved(KEY)  # type: ignore[union-attr]

        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(hog.pid, {cpu})
        time.sleep(0.2)
        nice = ("normal", min(base[1] + 10, 19))
        # Under SCHED_IDLE beside the busy process: still running after its patience, so starved;
        # the caller is answered by a copy at nice +10 (the first copy ends whenever it gets the CPU).
        asyncio.run(predict())
        assert batcher._guard.starved(KEY) and adapter.seen.count(nice) == 1  # type: ignore[union-attr]
        assert metrics.heavy_starved._value.get() == 1
        asyncio.run(predict())  # at nice +10 (given ~1/10 of the CPU: it stays there)
        assert adapter.seen.count(nice) == 2 and batcher._guard.starved(KEY)  # type: ignore[union-attr]

        stop_process(hog)
        hog = None
        time.sleep(0.2)  # the unheeded first copy gets the CPU now and ends
        idle_before = len(adapter.seen) - adapter.seen.count(nice)
        asyncio.run(predict())  # at nice +10 on a free CPU: room again
        asyncio.run(predict())  # under SCHED_IDLE again
        assert adapter.seen.count(nice) == 3 and adapter.seen[-1][0] == "idle"
        assert len(adapter.seen) - adapter.seen.count(nice) == idle_before + 1
        assert metrics.heavy_starved._value.get() == 1
        batcher.close()
    finally:
        if hog is not None:
            stop_process(hog)
        os.sched_setaffinity(0, affinity)
