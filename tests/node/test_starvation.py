"""node.starvation: a heavy model starved under SCHED_IDLE moves to nice +10, and back when the CPU frees.

The rule on its own (wall and CPU times given), then through the batcher on the real
kernel: a busy-looping process shares the one CPU the test pins itself to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from coordinator.processes import stop_process
from coordinator.registry import Registry
from node.batching import Batcher, _Request
from node.metrics import NodeMetrics
from node.priority import HeavySched, thread_priority
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
        batcher = Batcher(64, metrics, heavy_predict_s=0.002, heavy_sched="idle", heavy_nice=10)
        base = thread_priority()

        async def predict() -> None:
            await batcher.predict(KEY, big, row)

        guard = batcher._guard
        assert guard is not None
        nice = ("normal", min(base[1] + 10, 19))

        def settle_under_idle() -> None:
            """Predict until one runs under SCHED_IDLE and leaves the model unstarved. On a machine
            other work loads, the guard may rightly find it starved on the way (then at nice +10
            until a predict there gets half a CPU)."""
            for _ in range(50):
                asyncio.run(predict())
                if adapter.seen[-1][0] == "idle" and not guard.starved(KEY):
                    return
            pytest.fail("the model never ran unstarved under SCHED_IDLE")

        asyncio.run(predict())  # cost unknown yet: on the loop; now it is heavy
        settle_under_idle()
        starved_before, nice_before = metrics.heavy_starved._value.get(), adapter.seen.count(nice)

        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(hog.pid, {cpu})
        time.sleep(0.2)
        # Under SCHED_IDLE beside the busy process: still running after its patience, so starved;
        # the caller is answered by a copy at nice +10 (the first copy ends whenever it gets the CPU).
        asyncio.run(predict())
        assert guard.starved(KEY) and adapter.seen.count(nice) == nice_before + 1
        assert metrics.heavy_starved._value.get() == starved_before + 1
        asyncio.run(predict())  # at nice +10 (given ~1/10 of the CPU: it stays there)
        assert adapter.seen.count(nice) == nice_before + 2 and guard.starved(KEY)

        stop_process(hog)
        hog = None
        time.sleep(0.2)  # the unheeded first copy gets the CPU now and ends
        settle_under_idle()  # at nice +10 on a free CPU: room again, then under SCHED_IDLE
        batcher.close()
    finally:
        if hog is not None:
            stop_process(hog)
        os.sched_setaffinity(0, affinity)


class Stalled:
    """An adapter that burns `cpu_s` of CPU, then waits (no CPU) as long as its thread's pool says.

    A stand-in for a predict the kernel does not schedule: the batcher's guard sees wall time
    without CPU time, as under SCHED_IDLE beside busy processes, without needing them.
    """

    def __init__(self, real: Any, cpu_s: float, waits: dict[str, float]) -> None:
        self.real, self.cpu_s, self.waits = real, cpu_s, waits
        self.task, self.n_features = real.task, real.n_features
        self.pools: list[str] = []

    def predict(self, x: np.ndarray) -> Predictions:
        name = threading.current_thread().name
        pool = next((p for p in self.waits if name.startswith(p)), "loop")
        self.pools.append(pool)
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        time.sleep(self.waits.get(pool, 0.0))
        return self.real.predict(x)


HEAVY_POOL, STARVED_POOL = "modelcache-predict-heavy", "modelcache-predict-starved"


@pytest.fixture
def real_big(registry: Registry, publish: PublishFn) -> LoadedModel:
    meta = publish("big", "1")
    return deserialize(meta, registry.artifact_path(meta).read_bytes())


def stalled(real: LoadedModel, waits: dict[str, float]) -> tuple[Stalled, LoadedModel]:
    """`real` behind a `Stalled` adapter (1 ms of CPU, then `waits` by pool), and the model using it."""
    adapter = Stalled(real.adapter, 0.001, waits)
    return adapter, LoadedModel(real.meta, adapter)


def test_a_hedged_predict_whose_two_copies_both_ended_still_records_its_spans(
    real_big: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from node import otel, tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(otel, "_exporter", lambda env: exporter)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    otel.install("n1")
    try:
        # The SCHED_IDLE copy outlives its patience (~51 ms) but ends before the nice copy does,
        # so both copies have stamped the request when its caller is answered.
        adapter, big = stalled(real_big, {HEAVY_POOL: 0.15, STARVED_POOL: 0.4})
        batcher = Batcher(64, heavy_predict_s=0.0002, heavy_sched="idle")
        row = [[0.1, 0.2, 0.3, 0.4]]
        hedged = "ef" * 16

        async def traced_predict(trace_id: str) -> None:
            request = tracing.start_request("POST /predict", f"00-{trace_id}-{'cd' * 8}-01")
            await batcher.predict(KEY, big, row)
            tracing.end_request(request, 200)

        asyncio.run(traced_predict("ab" * 16))  # on the loop: the lane's cost is learnt, it is heavy
        asyncio.run(traced_predict(hedged))
        assert adapter.pools == ["loop", HEAVY_POOL, STARVED_POOL]
        batcher.close()
    finally:
        tracing.shutdown()  # flushes the spans to the exporter
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans if format(span.context.trace_id, "032x") == hedged]
    assert names.count("batch.wait") == 1 and names.count("predict") == 1, names


def test_a_batcher_closed_while_a_heavy_predict_outlives_its_patience_does_not_leave_its_caller_waiting(
    real_big: LoadedModel,
) -> None:
    _, big = stalled(real_big, {HEAVY_POOL: 0.3})
    batcher = Batcher(64, heavy_predict_s=0.0002, heavy_sched="idle")
    row = [[0.1, 0.2, 0.3, 0.4]]

    async def scenario() -> None:
        await batcher.predict(KEY, big, row)  # on the loop: the lane is heavy from now on
        caller = asyncio.ensure_future(batcher.predict(KEY, big, row))
        await asyncio.sleep(0.02)  # its predict runs under SCHED_IDLE, within its patience (~51 ms)
        batcher.close()  # the node shuts down
        done, _ = await asyncio.wait({caller}, timeout=2)
        assert done, "the caller still waits 2 s after the batcher closed"
        with pytest.raises(RuntimeError):
            caller.result()

    asyncio.run(scenario())


@pytest.mark.parametrize("cannot", ["forbidden", "not-linux"])
def test_a_slow_heavy_predict_is_not_run_twice_when_the_heavy_pool_could_not_use_sched_idle(
    real_big: LoadedModel, monkeypatch: pytest.MonkeyPatch, cannot: str
) -> None:
    """A seccomp profile forbidding sched_setscheduler (or another OS): the heavy pool runs at nice
    +10 (or normal priority), not SCHED_IDLE, so a slow predict there is contention the nice pool
    would see too, not SCHED_IDLE starvation: running it again only doubles its CPU."""
    from node import priority

    if cannot == "forbidden":

        def forbidden(*args: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(priority.os, "sched_setscheduler", forbidden)
    else:
        monkeypatch.setattr(priority, "LINUX", False)
    adapter, big = stalled(real_big, {HEAVY_POOL: 0.15, STARVED_POOL: 0.15})
    metrics = NodeMetrics()
    batcher = Batcher(64, metrics, heavy_predict_s=0.0002, heavy_sched="idle")
    row = [[0.1, 0.2, 0.3, 0.4]]

    async def predicts() -> None:
        for _ in range(4):
            await batcher.predict(KEY, big, row)

    try:
        asyncio.run(predicts())
    finally:
        batcher.close()
    assert adapter.pools == ["loop", HEAVY_POOL, HEAVY_POOL, HEAVY_POOL]
    assert metrics.heavy_starved._value.get() == 0


def test_a_hedged_predict_whose_sched_idle_copy_never_started_does_not_run_it_later(
    real_big: LoadedModel,
) -> None:
    """Two heavy models starve at once on a pool of one thread: the second one's SCHED_IDLE copy
    waits in the pool's queue when its hedge answers the callers. That copy is dead work: left
    queued it would run (and delay every later SCHED_IDLE predict) as soon as the thread frees."""
    first, a = stalled(real_big, {HEAVY_POOL: 0.4, STARVED_POOL: 0.0})
    second, b = stalled(real_big, {HEAVY_POOL: 0.4, STARVED_POOL: 0.0})
    batcher = Batcher(64, heavy_predict_s=0.0002, heavy_sched="idle", threads=1)
    row = [[0.1, 0.2, 0.3, 0.4]]

    async def scenario() -> None:
        await batcher.predict(("a", "1"), a, row)  # on the loop: both lanes are heavy from now on
        await batcher.predict(("b", "1"), b, row)
        running = asyncio.ensure_future(batcher.predict(("a", "1"), a, row))
        await asyncio.sleep(0.005)  # a's copy holds the pool's one thread; b's waits behind it
        await batcher.predict(("b", "1"), b, row)  # answered by its hedge after ~51 ms
        await running
        await asyncio.sleep(0.5)  # a's SCHED_IDLE copy has ended; the thread is free

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert first.pools == ["loop", HEAVY_POOL, STARVED_POOL]
    assert second.pools == ["loop", STARVED_POOL]


def test_a_starved_predict_whose_callers_all_gave_up_is_not_run_again(
    real_big: LoadedModel,
) -> None:
    """The client timed out while its predict waited for a CPU under SCHED_IDLE: running the batch
    again at nice +10, on a machine whose CPUs are already full, would answer nobody."""
    adapter, big = stalled(real_big, {HEAVY_POOL: 0.2, STARVED_POOL: 0.0})
    metrics = NodeMetrics()
    batcher = Batcher(64, metrics, heavy_predict_s=0.0002, heavy_sched="idle")
    row = [[0.1, 0.2, 0.3, 0.4]]

    async def scenario() -> None:
        await batcher.predict(KEY, big, row)  # on the loop: the lane is heavy from now on
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.predict(KEY, big, row), 0.02)  # the client gives up
        await asyncio.sleep(0.3)  # past its patience (~51 ms) and the SCHED_IDLE copy's end

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert adapter.pools == ["loop", HEAVY_POOL]
    assert batcher._guard is not None and batcher._guard.starved(KEY)  # still learnt: starved
    assert metrics.heavy_starved._value.get() == 1


def test_a_heavy_predict_whose_lane_costs_were_forgotten_meanwhile_still_runs(
    registry: Registry, publish: PublishFn
) -> None:
    """With over 4,096 lanes a predict thread forgets the oldest lane's costs; that can happen
    between the drain finding a lane heavy and timing its predict (a KeyError failed the batch)."""
    meta = publish("big", "1")
    real = deserialize(meta, registry.artifact_path(meta).read_bytes())
    big = LoadedModel(meta, real.adapter)
    batcher = Batcher(64, heavy_predict_s=0.0002, heavy_sched="idle")
    x = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)

    async def scenario() -> list[Any]:
        request = _Request(big, x, asyncio.get_running_loop().create_future())
        return await batcher._run_heavy(KEY, [request], 1)  # no costs known for KEY

    try:
        (outcome,) = asyncio.run(scenario())
    finally:
        batcher.close()
    assert isinstance(outcome, Predictions) and len(outcome.labels) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("sched", ["nice", "process"])
def test_heavy_predicts_beside_a_busy_process_never_stall_the_event_loop_for_long(
    registry: Registry, publish: PublishFn, sched: HeavySched
) -> None:
    """The GIL is a lock the event loop and the heavy pool's threads share. A SCHED_IDLE thread
    that holds it (the Python around XGBoost's GIL-free predict), or is handed it (CPython waits
    for the waiter to take it), when a busy process holds the CPU gets no CPU to let go of it:
    the loop, every model's requests and the health checks wait with it (~1 s here)."""
    meta = publish("big", "1", rounds=1000)  # ~6 ms of CPU per 2,000-row predict
    big = deserialize(meta, registry.artifact_path(meta).read_bytes())
    x = np.random.default_rng(0).random((2000, 4), dtype=np.float32)
    cpu = min(os.sched_getaffinity(0))
    affinity = os.sched_getaffinity(0)
    hog: subprocess.Popen[bytes] | None = None
    os.sched_setaffinity(0, {cpu})
    batcher = Batcher(4096, heavy_predict_s=0.002, heavy_sched=sched)  # the node's defaults otherwise
    try:
        keys = [("big", "1"), ("big", "2"), ("big", "3")]  # three heavy models' clients
        for key in keys:
            asyncio.run(batcher.predict(key, big, x))  # on the loop: now it is heavy
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(hog.pid, {cpu})
        time.sleep(0.2)
        lags: list[float] = []

        async def ticker(stop: asyncio.Event) -> None:
            while not stop.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - start - 0.005)

        async def load() -> None:
            stop = asyncio.Event()
            ticks = asyncio.ensure_future(ticker(stop))
            end = time.perf_counter() + 4

            async def client(key: tuple[str, str]) -> None:
                while time.perf_counter() < end:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(batcher.predict(key, big, x), 3)

            await asyncio.gather(*(client(key) for key in keys))
            stop.set()
            await ticks

        asyncio.run(load())
        assert max(lags) < 0.3, f"the event loop stalled {max(lags) * 1e3:.0f} ms"
    finally:
        batcher.close()
        if hog is not None:
            stop_process(hog)
        os.sched_setaffinity(0, affinity)
