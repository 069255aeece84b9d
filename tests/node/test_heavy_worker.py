"""node.heavy_worker: heavy XGBoost predicts in a SCHED_IDLE worker process (HEAVY_PREDICT_SCHED=process).

The worker on its own (real child processes: killed, stopped, orphaned), then through the
batcher, then in a real node process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.registry import Registry
from node.batching import Batcher
from node.heavy_worker import HeavyWorker, WorkerGone
from node.metrics import NodeMetrics
from node.runtime import LoadedModel, Predictions, deserialize
from tests.helpers import NodeProcess, PublishFn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")

KEY = ("big", "1")


@pytest.fixture
def big(registry: Registry, publish: PublishFn) -> LoadedModel:
    meta = publish("big", "1", rounds=40, objective="multi:softprob")
    return deserialize(meta, registry.artifact_path(meta).read_bytes())


async def _worker_with(*adapters: Any, **kw: Any) -> HeavyWorker:
    worker = await HeavyWorker.start(reply_timeout_s=1.0, **kw)
    for adapter in adapters:
        await worker.load(adapter.token, adapter.to_ubj())
    return worker


def _x(rows: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def _same(a: Predictions, b: Predictions) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def _gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether process `pid` exits within `within_s` (a zombie its parent has not reaped counts)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_worker_predicts_what_the_node_predicts_under_sched_idle(big: LoadedModel) -> None:
    adapter: Any = big.adapter

    async def main() -> None:
        worker = await _worker_with(adapter)
        try:
            got, cpu = await worker.predict(adapter.token, _x())
            _same(got, adapter.predict(_x()))
            assert cpu > 0
            assert worker.runs_as == "SCHED_IDLE" and os.sched_getscheduler(worker.pid) == os.SCHED_IDLE
        finally:
            worker.close()
        assert not worker.alive()

    asyncio.run(main())


def test_a_worker_keeps_only_its_most_recently_used_models(registry: Registry, publish: PublishFn) -> None:
    adapters: list[Any] = []
    for version in ("1", "2", "3"):
        meta = publish("m", version, seed=int(version))
        adapters.append(deserialize(meta, registry.artifact_path(meta).read_bytes()).adapter)
    first, second, third = adapters

    async def main() -> None:
        worker = await _worker_with(first, second, max_models=2)
        try:
            await worker.predict(first.token, _x())  # now the second is the least recently used
            await worker.load(third.token, third.to_ubj())
            assert worker.holds(first.token) and worker.holds(third.token) and not worker.holds(second.token)
            with pytest.raises(WorkerGone, match="does not hold the model"):
                await worker.predict(second.token, _x())
            assert worker.alive()  # asking for a dropped model is not the worker's failure
            _same((await worker.predict(third.token, _x()))[0], third.predict(_x()))
        finally:
            worker.close()

    asyncio.run(main())


@pytest.mark.parametrize(("signum", "error"), [(signal.SIGKILL, "gone"), (signal.SIGSTOP, "silent for 1 s")])
def test_a_dead_or_silent_worker_is_gone_and_killed(big: LoadedModel, signum: int, error: str) -> None:
    adapter: Any = big.adapter

    async def main() -> None:
        worker = await _worker_with(adapter)
        try:
            os.kill(worker.pid, signum)
            started = time.monotonic()
            with pytest.raises(WorkerGone, match=error):
                await worker.predict(adapter.token, _x())
            assert time.monotonic() - started < 5  # a stopped one: the 1 s reply timeout
            assert not worker.alive() and worker.process.poll() is not None  # SIGKILL ends a stopped one too
        finally:
            worker.close()

    asyncio.run(main())


@pytest.mark.parametrize("stopped", [False, True])
def test_a_worker_exits_when_the_node_that_started_it_dies(stopped: bool) -> None:
    # A node killed outright closes its end of the socket: the worker reads EOF and exits; a
    # stopped worker never reads it, and is killed by the kernel (PR_SET_PDEATHSIG) instead.
    script = (
        "import asyncio, time; from node.heavy_worker import HeavyWorker; "
        "w = asyncio.run(HeavyWorker.start()); print(w.pid, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as node:
        try:
            assert node.stdout is not None
            worker_pid = int(node.stdout.readline())
            os.kill(worker_pid, signal.SIGINT)  # Ctrl-C reaches the node's whole process group
            assert not _gone(worker_pid, within_s=0.3)  # ignored: the node says when to stop
            if stopped:
                os.kill(worker_pid, signal.SIGSTOP)
            node.kill()
            node.wait(5)
            assert _gone(worker_pid)
        finally:
            node.kill()


class Spy:
    """An XGBoost adapter that counts the predicts made in this process (not in a worker)."""

    def __init__(self, real: Any) -> None:
        self.real, self.task, self.n_features = real, real.task, real.n_features
        self.token, self.to_ubj = real.token, real.to_ubj
        self.in_node = 0

    def predict(self, x: np.ndarray) -> Predictions:
        self.in_node += 1
        return self.real.predict(x)


class InWorker:
    """A batcher in process mode whose worker holds `big` (behind a Spy) and has predicted it."""

    def __init__(self, big: LoadedModel) -> None:
        self.spy = Spy(big.adapter)
        self.model = LoadedModel(big.meta, self.spy)
        self.metrics = NodeMetrics()
        self.batcher = Batcher(64, self.metrics, heavy_predict_s=1e-6, heavy_sched="process")
        self.slot = self.batcher._slots[self.spy.token % len(self.batcher._slots)]

    async def start(self) -> InWorker:
        await self.predict()  # cost unknown yet: the light pool; now it is heavy
        await self.predict()  # heavy: in the node while the worker starts and gets the model
        assert self.spy.in_node == 2
        await self.until_held()
        await self.predict()
        assert self.spy.in_node == 2  # this one in the worker
        return self

    async def until_held(self) -> None:
        deadline = time.monotonic() + 30
        while self.slot.worker is None or not self.slot.worker.holds(self.spy.token):
            assert time.monotonic() < deadline, "the worker never got the model"
            await asyncio.sleep(0.05)

    async def predict(self, seed: int = 0) -> Predictions:
        return await self.batcher.predict(KEY, self.model, _x(seed=seed))


def test_the_batcher_predicts_a_heavy_booster_in_its_worker_once_the_worker_holds_it(
    big: LoadedModel,
) -> None:
    async def main() -> int:
        run = await InWorker(big).start()
        worker = run.slot.worker
        assert worker is not None and os.sched_getscheduler(worker.pid) == os.SCHED_IDLE
        for seed in range(3):
            _same(await run.predict(seed), big.adapter.predict(_x(seed=seed)))
        assert run.spy.in_node == 2
        assert run.batcher.is_heavy(KEY, 64)  # the worker's CPU time is the model's cost
        assert run.metrics.heavy_starved._value.get() == 0
        run.batcher.close()
        return worker.pid

    assert _gone(asyncio.run(main()))


def test_a_request_whose_worker_died_is_answered_by_the_node_and_a_new_worker_takes_over(
    big: LoadedModel,
) -> None:
    async def main() -> None:
        run = await InWorker(big).start()
        assert run.slot.worker is not None
        first = run.slot.worker.pid
        os.kill(first, signal.SIGKILL)
        run.slot.worker.process.wait(5)  # dead between two batches: the next one notices
        _same(await run.predict(), big.adapter.predict(_x()))  # from the node
        assert run.spy.in_node == 3 and run.metrics.heavy_worker_failures._value.get() == 1
        await run.predict()  # a new worker starts and gets the model meanwhile
        await run.until_held()
        before = run.spy.in_node
        _same(await run.predict(), big.adapter.predict(_x()))
        assert run.spy.in_node == before and run.slot.worker.pid != first
        assert run.metrics.heavy_worker_failures._value.get() == 1
        run.batcher.close()

    asyncio.run(main())


def test_a_stopped_worker_is_hedged_in_the_node_without_waiting_for_its_timeout(big: LoadedModel) -> None:
    async def main() -> None:
        run = await InWorker(big).start()
        worker = run.slot.worker
        assert worker is not None
        os.kill(worker.pid, signal.SIGSTOP)  # as starved as a SCHED_IDLE process can be
        try:
            started = time.monotonic()
            calls = run.batcher.calls
            _same(await run.predict(), big.adapter.predict(_x()))
            assert time.monotonic() - started < 10  # the guard's patience, not the 60 s reply timeout
            assert run.batcher.calls == calls + 1  # one batch, predicted once (by the node)
            assert run.spy.in_node == 3 and run.metrics.heavy_starved._value.get() == 1
            await run.predict()  # in the node at once, not sent behind the stopped worker's batch
            assert run.spy.in_node == 4 and run.metrics.heavy_starved._value.get() == 1
            assert run.metrics.heavy_worker_failures._value.get() == 0  # slow is not failed
        finally:
            os.kill(worker.pid, signal.SIGCONT)
            run.batcher.close()

    asyncio.run(main())


def test_a_booster_the_worker_cannot_load_is_predicted_in_the_node_and_the_worker_kept(
    big: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        run = await InWorker(big).start()
        worker = run.slot.worker
        assert worker is not None
        bad = Spy(big.adapter)
        bad.token = big.adapter.token + 10_000 * len(run.batcher._slots)  # same slot, another model
        sent: list[int] = []
        bad.to_ubj = lambda: sent.append(1) or b"not a booster"  # type: ignore[method-assign]
        model = LoadedModel(big.meta, bad)
        key = ("bad", "1")
        for _ in range(2):  # light, then heavy (in the node while the worker tries to load it)
            await run.batcher.predict(key, model, _x())
        deadline = time.monotonic() + 30
        while run.metrics.heavy_worker_failures._value.get() < 1:
            assert time.monotonic() < deadline, "the worker never refused the junk"
            await asyncio.sleep(0.05)
        for seed in range(3):
            _same(await run.batcher.predict(key, model, _x(seed=seed)), big.adapter.predict(_x(seed=seed)))
        assert bad.in_node == 5 and sent == [1]  # in the node, never sent again
        assert run.slot.worker is worker and worker.alive()  # the others keep it
        before = run.spy.in_node
        await run.predict()
        assert run.spy.in_node == before  # still in the worker
        assert "could not load the model" in caplog.text
        run.batcher.close()

    asyncio.run(main())


def test_a_heavy_model_a_worker_cannot_take_is_predicted_in_the_node(big: LoadedModel) -> None:
    class NotPortable:  # e.g. a scikit-learn estimator: no UBJ form
        def __init__(self, real: Any) -> None:
            self.real, self.task, self.n_features = real, real.task, real.n_features

        def predict(self, x: np.ndarray) -> Predictions:
            return self.real.predict(x)

    model = LoadedModel(big.meta, NotPortable(big.adapter))
    batcher = Batcher(64, heavy_predict_s=1e-6, heavy_sched="process")

    async def main() -> None:
        for _ in range(3):
            _same(await batcher.predict(KEY, model, _x()), big.adapter.predict(_x()))

    asyncio.run(main())
    assert batcher.is_heavy(KEY, 64)
    assert all(slot.worker is None for slot in batcher._slots)
    batcher.close()


def test_a_node_runs_heavy_boosters_in_sched_idle_workers_and_stops_them_with_it(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> None:
    publish("m", "1.0", rounds=40)
    node = node_process(
        registry.root, MODELCACHE_HEAVY_PREDICT_MS="0.001", MODELCACHE_HEAVY_PREDICT_SCHED="process"
    )
    assert node.proc is not None
    rows = [[0.1, 0.2, 0.3, 0.4]] * 50
    first = httpx.post(f"{node.url}/api/v1/models/m/batch_predict", json={"instances": rows}, timeout=10)
    assert first.status_code == 200
    deadline = time.monotonic() + 30
    workers: list[int] = []
    while not workers:
        assert time.monotonic() < deadline, "no heavy predict worker started"
        answer = httpx.post(f"{node.url}/api/v1/models/m/batch_predict", json={"instances": rows}, timeout=10)
        assert answer.json()["predictions"] == first.json()["predictions"]  # in the node or a worker
        workers = _children(node.proc.pid, "node.heavy_worker")
        time.sleep(0.05)
    for pid in workers:
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        with open(f"/proc/{pid}/environ", "rb") as environ:
            assert b"MODELCACHE_" not in environ.read()  # none of the node's settings or secrets
    node.stop()
    assert all(_gone(pid) for pid in workers)


def _children(pid: int, marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == pid and marker.encode() in command:
            found.append(int(entry))
    return found
