"""Adaptive micro-batching: concurrent requests for one model version share one predict call.

The HTTP layer calls, after resolving the model::

    batcher = Batcher(settings.batch_max_rows, metrics)      # one per node
    out = await batcher.predict((model_type, version), model, rows)
    # out: Predictions for exactly `rows`, in order
    ...
    batcher.close()                                          # at shutdown

Semantics of `predict(key, model, rows)`:

- `key` names the lane (use the resolved `(model_type, version)`); `model` is
  the `LoadedModel` the request resolved to; `rows` is what the request carried:
  rows as lists or `{name: value}` maps (as `LoadedModel.to_matrix` takes) or
  an already decoded float matrix `[N, F]` (the V2 path).
- Rows are validated here, per request, before anything is stacked: an invalid
  request raises `InvalidInput` to its own caller and never joins a batch.
- No timer, so no request waits for company. A request for an idle lane is
  predicted at once. Requests that arrive while a predict of that lane is in
  flight queue; when it finishes, the next predict takes the queued requests
  (whole requests, at most `max_rows` rows, one larger request alone).
  Batches therefore grow with load and stay at 1 row when there is none.
- Each caller gets its own rows' outputs (`Predictions.rows`), as if alone.
- If a coalesced predict raises, each of its requests is predicted alone, so
  only the culprit's caller sees the error.
- A caller that is cancelled (client gone) just stops waiting; its batch still
  completes for the others.
- Only requests holding the same model object share a call: a reload that
  swaps the model under one key never mixes old and new in one predict.
- Isolation between models: predicts run on a pool of `threads` threads, and a
  lane has at most one predict in flight, so one model (a big one taking 1,000-row
  batches, say) holds at most one thread and the others keep theirs; XGBoost's
  C predict releases the GIL, so they really run side by side. A lane's backlog
  is bounded by `max_queued_rows`: beyond it the caller gets `ModelOverloaded`
  (429) at once instead of a queue that delays its own callers for seconds.
- Heavy lanes: each lane's CPU seconds per predict call, and per row, are averaged (EWMA,
  measured with `time.thread_time` where the predict runs). A lane over `heavy_predict_s`
  per call runs on a second pool (except a predict whose rows would cost less than
  `heavy_predict_s` at the lane's cost per row: a light model's lone rows while some client
  sends it large batches) whose threads lowered their OS priority at start (`heavy_sched`:
  SCHED_IDLE, or nice +`heavy_nice`; node.priority), and a lone row of it is never
  predicted on the loop: under contention the kernel serves the loop and the light
  models first, and an idle machine still gives the heavy model every spare cycle
  (docs/design.md, Isolation). With `heavy_sched="process"` a heavy XGBoost booster is
  predicted in a SCHED_IDLE worker process instead (node.heavy_worker), awaited on the loop.

Where predicts run (measured with `bench_http.py --batch-modes thread adaptive`; the
run was committed as `benchmarks/results/http_batching.json`, now in git history): a
batch runs in one dedicated thread, so the event loop goes on parsing requests while
XGBoost's C predict runs without the GIL, which is what lets batches form; but the thread hop
costs more than the predict at low load. So a request of at most
`inline_max_rows` rows (default 1) for an idle lane yields once to the loop
(a yield, not a timer) and, still alone, is predicted on the loop. On the
bare app that measured 1.43x/1.49x the baseline at 1 connection (thread
always: 0.95x/1.27x) and 1.80x/2.56x at 64 (thread always: 1.57x/2.71x).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from node import tracing
from node.errors import InvalidInput, ModelOverloaded
from node.heavy_worker import HeavyWorker, ModelRefused, WorkerGone
from node.metrics import NodeMetrics
from node.priority import HeavySched, lower_this_thread
from node.runtimes import LoadedModel, Predictions, Row
from node.starvation import StarvationGuard

log = logging.getLogger("modelcache.batching")

HEAVY_PREDICT_S = 0.005
"""A lane whose predict calls average more CPU than this (EWMA) is heavy: it runs on the low-priority pool."""
HEAVY_SCHED: HeavySched = "nice"
"""How the heavy pool's threads lower their priority: nice +`heavy_nice`. Not SCHED_IDLE by default: a
SCHED_IDLE thread holding (or being handed) the GIL while other processes fill the CPUs gets no CPU
to release it, and the event loop waits with it (~1 s beside one busy process; node.starvation)."""
HEAVY_NICE = 10
"""With `heavy_sched="nice"`: how much they raise their nice value (+10: ~1/10 of a nice-0 thread's share)."""
WORKER_RETRY_S = 30.0
"""After a heavy predict worker failed to start or load, its models are predicted in the node this long."""
_EWMA = 0.25
_MAX_COSTS = 4096  # lanes whose cost is remembered (one per model version served lately)

Outcome = Predictions | BaseException


@dataclass(eq=False)
class _Request:
    model: LoadedModel
    x: np.ndarray
    future: asyncio.Future[Predictions] | None
    times: list[int] | None = None
    """Traced requests only: [queued, predict start, predict end (ns), rows of that predict]."""


class _Lane:
    """The requests of one key waiting for the predict in flight to finish."""

    __slots__ = ("collecting", "queue", "queued_rows", "task")

    def __init__(self) -> None:
        self.queue: deque[_Request] = deque()
        self.queued_rows = 0  # rows in `queue` (bounded by Batcher.max_queued_rows)
        self.task: asyncio.Task[None] | None = None
        self.collecting = False  # a lone caller is yielding once to see who else comes


class Batcher:
    """Coalesces concurrent predicts per key into calls of at most `max_rows` rows."""

    def __init__(
        self,
        max_rows: int = 256,
        metrics: NodeMetrics | None = None,
        *,
        inline_max_rows: int = 1,
        threads: int = 2,
        max_queued_rows: int | None = None,
        heavy_predict_s: float = HEAVY_PREDICT_S,
        heavy_sched: HeavySched = HEAVY_SCHED,
        heavy_nice: int = HEAVY_NICE,
    ) -> None:
        if max_rows < 1 or threads < 1:
            raise ValueError("max_rows and threads must be at least 1")
        self.max_rows, self.metrics, self.inline_max_rows = max_rows, metrics, inline_max_rows
        self.max_queued_rows = max_queued_rows if max_queued_rows is not None else 8 * max_rows
        # Not the default executor: a predict must never queue behind a model load.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="modelcache-predict")
        # Heavy lanes' predicts: threads at a lower OS priority (node.priority), so a heavy model
        # gets the CPU the loop and the light models leave, and never delays them for long.
        self._heavy = ThreadPoolExecutor(
            threads,
            thread_name_prefix="modelcache-predict-heavy",
            initializer=self._lower_heavy_thread,
            initargs=(heavy_sched, heavy_nice),
        )
        self._heavy_idle: bool | None = None
        """Whether the heavy pool's threads run as SCHED_IDLE (None until one started): a seccomp
        profile or another OS may leave them at nice +10 or normal priority, where a slow predict
        is not SCHED_IDLE starvation and running it again would only double its CPU."""
        # Under SCHED_IDLE a heavy model can starve when other work fills the CPUs: it then runs
        # on a third pool at nice +heavy_nice until the CPUs have room again (node.starvation).
        self._guard = StarvationGuard() if heavy_sched in ("idle", "process") else None
        self._starved = ThreadPoolExecutor(
            threads,
            thread_name_prefix="modelcache-predict-starved",
            initializer=_lower_starved_thread,
            initargs=(heavy_nice,),
        )
        # HEAVY_PREDICT_SCHED=process: heavy XGBoost predicts go to SCHED_IDLE worker processes
        # (node.heavy_worker), awaited on the event loop; the heavy pool, at nice +heavy_nice,
        # serves the models a worker cannot take. A model always goes to the same worker: one
        # copy of it, whose trees stay warm in that CPU's caches.
        workers = threads if heavy_sched == "process" else 0
        self._slots = [_WorkerSlot(self._starved, self._count_worker_failure) for _ in range(workers)]
        self.heavy_predict_s = heavy_predict_s
        # Per lane: EWMAs of CPU seconds per predict call and per row.
        self._costs: dict[Hashable, tuple[float, float]] = {}
        self._lanes: dict[Hashable, _Lane] = {}
        self.timed = tracing.enabled()
        """Stamp predicts for the batch.wait and predict spans (fixed at construction: off, one check)."""
        self.calls = 0
        """Predict calls made so far (each may serve several requests)."""

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._heavy.shutdown(wait=False, cancel_futures=True)
        self._starved.shutdown(wait=False, cancel_futures=True)
        for slot in self._slots:
            slot.close()

    def is_heavy(self, key: Hashable, rows: int = 1) -> bool:
        """Whether a predict of `rows` rows for `key` belongs on the low-priority pool: the lane's
        predicts have lately cost more CPU than `heavy_predict_s` each, and so would `rows` rows
        at its recent cost per row. The second half keeps a light model's small requests off
        that pool while some client sends it large batches (one 1,000-row batch used to make
        every request of the model low-priority for the next few predicts)."""
        cost = self._costs.get(key)
        return cost is not None and cost[0] > self.heavy_predict_s and cost[1] * rows > self.heavy_predict_s

    def _observe_cost(self, key: Hashable, seconds: float, rows: int) -> None:
        before = self._costs.get(key)
        was_heavy = before is not None and before[0] > self.heavy_predict_s
        per_row = seconds / max(1, rows)
        if before is None:
            cost = seconds
        else:
            cost = before[0] + _EWMA * (seconds - before[0])
            per_row = before[1] + _EWMA * (per_row - before[1])
        # One assignment (atomic under the GIL): the loop reading is_heavy never misses the key.
        self._costs[key] = (cost, per_row)
        if len(self._costs) > _MAX_COSTS:  # forget the longest-known lane; it re-learns in one call
            self._costs.pop(next(iter(self._costs)), None)
        if (cost > self.heavy_predict_s) != was_heavy:
            state = "heavy: low-priority predicts" if not was_heavy else "light again"
            name = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            log.info("model %s is %s (%.1f ms of CPU per predict)", name, state, cost * 1e3)

    async def predict(
        self, key: Hashable, model: LoadedModel, rows: Sequence[Row] | np.ndarray
    ) -> Predictions:
        """The outputs for `rows`, predicted alone or together with concurrent requests for `key`."""
        x = _validated(model, rows)
        if self.timed and tracing.recording():
            return await self._traced(key, model, x)
        return await self._predict(key, model, x)

    async def _traced(self, key: Hashable, model: LoadedModel, x: np.ndarray) -> Predictions:
        """`_predict`, then its wait for the predict and the predict itself as spans."""
        times = [time.time_ns()]
        out = await self._predict(key, model, x, times)
        # A starved heavy predict runs twice (see _run_heavy): the first copy to end stamps it.
        if len(times) >= 4:
            queued, start, end, rows = times[:4]
            tracing.record("batch.wait", queued, start)
            sizes = {"modelcache.batch_rows": rows, "modelcache.rows": len(x)}
            tracing.record("predict", start, end, **sizes)
        return out

    async def _predict(
        self, key: Hashable, model: LoadedModel, x: np.ndarray, times: list[int] | None = None
    ) -> Predictions:
        lane = self._lanes.get(key)
        if lane is None and len(x) <= self.inline_max_rows and not self.is_heavy(key, len(x)):
            return await self._lone(key, model, x, times)
        loop = asyncio.get_running_loop()
        request = _Request(model, x, loop.create_future(), times)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        elif lane.queue and lane.queued_rows + len(x) > self.max_queued_rows:
            # An empty queue always admits one request, however large (MAX_BATCH bounds it).
            raise ModelOverloaded(model.meta.model_type, lane.queued_rows, self.max_queued_rows)
        lane.queue.append(request)
        lane.queued_rows += len(x)
        if lane.task is None and not lane.collecting:
            lane.task = loop.create_task(self._drain(key, lane))
        return await request.future  # type: ignore[misc]

    async def _lone(
        self, key: Hashable, model: LoadedModel, x: np.ndarray, times: list[int] | None
    ) -> Predictions:
        """A small request for an idle lane: yield once, then predict on the loop if still alone.

        The one yield lets requests that are already runnable reach the lane; if
        any did, everyone goes to the predict thread together. Otherwise the
        predict runs here, without a thread hop (the cheaper way at low load).
        """
        lane = self._lanes[key] = _Lane()
        lane.collecting = True
        request = _Request(model, x, None, times)
        try:
            await asyncio.sleep(0)  # a yield, not a timer: no deadline is set
        finally:
            lane.collecting = False
            if not lane.queue:
                del self._lanes[key]
            elif lane.task is None:  # company arrived (or this caller was cancelled): drain it
                lane.task = asyncio.get_running_loop().create_task(self._drain(key, lane))
        if lane.task is None:
            return _single(self._run(key, [request]))
        request.future = asyncio.get_running_loop().create_future()
        lane.queue.appendleft(request)
        lane.queued_rows += len(x)
        return await request.future

    async def _drain(self, key: Hashable, lane: _Lane) -> None:
        """Predict the lane's queue batch by batch until it is empty, then retire the lane."""
        loop = asyncio.get_running_loop()
        batch: list[_Request] = []
        try:
            while lane.queue:
                batch = self._take(lane)
                if not batch:
                    continue
                rows = sum(len(r.x) for r in batch)
                if self.is_heavy(key, rows):
                    outcomes = await self._run_heavy(key, batch, rows)
                else:
                    outcomes = await loop.run_in_executor(self._executor, self._run, key, batch)
                _deliver(batch, outcomes)
        except BaseException as exc:
            # Shutdown or a bug: nobody may wait forever on a lane that stopped draining, the
            # batch in hand included (a heavy predict's hedge finding its pool shut down).
            for request in (*batch, *lane.queue):
                if request.future is not None and not request.future.done():
                    request.future.set_exception(RuntimeError(f"prediction abandoned: {exc!r}"))
            lane.queue.clear()
            lane.queued_rows = 0
            raise
        finally:
            lane.task = None
            if self._lanes.get(key) is lane and not lane.queue:
                del self._lanes[key]

    async def _run_heavy(self, key: Hashable, batch: list[_Request], rows: int) -> list[Outcome]:
        """`_run` on the low-priority pool: SCHED_IDLE, or nice +10 while the model starves there.

        A predict under SCHED_IDLE that outlives the guard's patience marks the model starved
        and runs again at nice +10, whose outcome its callers get; the first copy, which may get
        no CPU for seconds, finishes unheeded (a predict has no side effects)."""
        loop = asyncio.get_running_loop()
        guard = self._guard
        if self._slots and _portable(batch[0].model):
            return await self._run_in_worker(key, batch, rows)
        if guard is None or self._heavy_idle is False:  # "nice", "process" (in the node), SCHED_IDLE refused
            return await loop.run_in_executor(self._heavy, self._run, key, batch)
        if not guard.starved(key):
            running = loop.run_in_executor(self._heavy, self._run_timed, key, batch, time.perf_counter())
            expected_cpu = self._expected_cpu(key, rows)
            done, _ = await asyncio.wait({running}, timeout=guard.patience(expected_cpu))
            if self._heavy_idle is False:  # learnt as the pool's first thread started: not SCHED_IDLE
                return (await running)[0]
            if done:
                outcomes, wall, cpu = running.result()
                self._count_starved(guard.observe(key, wall, cpu))
                return outcomes
            running.add_done_callback(_unheeded)
            running.cancel()  # still queued behind other starved copies: it never runs (else no-op)
            return await self._hedge(key, batch, expected_cpu)
        return await self._run_starved(key, batch)

    def _expected_cpu(self, key: Hashable, rows: int) -> float:
        """CPU seconds a heavy predict of `rows` rows should take: is_heavy(key) found the lane's
        costs, but a predict thread may have forgotten them since (over _MAX_COSTS lanes): then
        the heavy bound's worth."""
        cost = self._costs.get(key)
        return cost[1] * rows if cost is not None else self.heavy_predict_s

    async def _hedge(self, key: Hashable, batch: list[_Request], expected_cpu: float) -> list[Outcome]:
        """The low-priority copy outlived its patience: mark the model starved, answer from nice +10."""
        assert self._guard is not None
        self._count_starved(self._guard.starving(key, expected_cpu))
        if all(r.future is None or r.future.done() for r in batch):  # its callers all gave up
            return [RuntimeError("prediction abandoned: its callers gave up")] * len(batch)
        return await self._run_starved(key, batch)

    async def _run_starved(
        self, key: Hashable, batch: list[_Request], only_if_starved: bool = False
    ) -> list[Outcome]:
        """`_run` on the nice +10 pool, its times told to the guard (which lets a starved model go
        once a predict there got half a CPU); `only_if_starved`: only while the model is."""
        assert self._guard is not None
        outcomes, wall, cpu = await asyncio.get_running_loop().run_in_executor(
            self._starved, self._run_timed, key, batch, time.perf_counter()
        )
        if not only_if_starved or self._guard.starved(key):
            self._guard.observe(key, wall, cpu)
        return outcomes

    async def _run_in_worker(self, key: Hashable, batch: list[_Request], rows: int) -> list[Outcome]:
        """`_run` in the model's worker process, guarded as SCHED_IDLE threads are (`_run_heavy`).

        In the node at nice +10 instead while the worker does not hold the model yet (it gets it
        in the background), while the model is starved, and when the worker fails."""
        loop = asyncio.get_running_loop()
        guard = self._guard
        assert guard is not None
        model = batch[0].model
        adapter: Any = model.adapter
        slot = self._slots[adapter.token % len(self._slots)]
        worker = slot.ready(adapter)
        # Busy: still on a batch whose callers the node answered (starved or stopped): not behind it.
        if worker is None or guard.starved(key) or worker.lock.locked():
            return await self._run_starved(key, batch, only_if_starved=True)
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        start, submitted = time.time_ns() if self.timed else 0, time.perf_counter()
        running = asyncio.ensure_future(slot.predict(worker, adapter.token, x))
        expected_cpu = self._expected_cpu(key, rows)
        done, _ = await asyncio.wait({running}, timeout=guard.patience(expected_cpu))
        if done:
            try:
                whole, cpu = running.result()
            except WorkerGone as exc:
                log.warning("%s; predicting in the node instead", exc)
                self._count_worker_failure()
                return await loop.run_in_executor(self._starved, self._run, key, batch)
            self._count_starved(guard.observe(key, time.perf_counter() - submitted, cpu))
            self._count_call(model, len(x))  # here, not before: a batch the node predicts counts there
            self._observe_cost(key, cpu, len(x))
            if self.timed:
                _stamp(batch, start, time.time_ns(), len(x))
            return _split(batch, whole)
        running.add_done_callback(_unheeded)  # not cancelled: its reply keeps the socket in step
        return await self._hedge(key, batch, expected_cpu)

    def _count_call(self, model: LoadedModel, rows: int) -> None:
        self.calls += 1
        if self.metrics is not None:
            self.metrics.observe_batch_rows(model.meta.model_type, rows)

    def _count_worker_failure(self) -> None:
        if self.metrics is not None:
            self.metrics.heavy_worker_failures.inc()

    def _count_starved(self, newly_starved: bool) -> None:
        if newly_starved and self.metrics is not None:
            self.metrics.heavy_starved.inc()

    def _run_timed(
        self, key: Hashable, batch: list[_Request], submitted: float
    ) -> tuple[list[Outcome], float, float]:
        """`_run`, with its wall time since `submitted` (queueing included) and its CPU time."""
        cpu = time.thread_time()
        outcomes = self._run(key, batch)
        return outcomes, time.perf_counter() - submitted, time.thread_time() - cpu

    def _lower_heavy_thread(self, sched: HeavySched, nice: int) -> None:
        runs_as = lower_this_thread(sched, nice)
        log.debug("heavy predict thread %s runs as %s", threading.get_native_id(), runs_as)
        idle = runs_as == "SCHED_IDLE"
        self._heavy_idle = idle if self._heavy_idle is None else self._heavy_idle and idle

    def _take(self, lane: _Lane) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        queue = lane.queue
        while queue:
            head = queue[0]
            if head.future is not None and head.future.done():
                queue.popleft()  # cancelled while queued
                lane.queued_rows -= len(head.x)
                continue
            if batch and (head.model is not batch[0].model or rows + len(head.x) > self.max_rows):
                break
            batch.append(queue.popleft())
            rows += len(head.x)
        lane.queued_rows -= rows
        return batch

    def _run(self, key: Hashable, batch: list[_Request]) -> list[Outcome]:
        """One predict for the whole batch; on failure, one per request (runs in the predict thread)."""
        model = batch[0].model
        x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
        self._count_call(model, len(x))
        start = time.time_ns() if self.timed else 0
        cpu = time.thread_time()  # CPU time: what the model costs, whatever the contention
        try:
            whole = model.adapter.predict(x)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            return [self._alone(key, r) for r in batch]
        self._observe_cost(key, time.thread_time() - cpu, len(x))
        if self.timed:
            _stamp(batch, start, time.time_ns(), len(x))
        return _split(batch, whole)

    def _alone(self, key: Hashable, request: _Request) -> Outcome:
        return self._run(key, [request])[0]


class _WorkerSlot:
    """One heavy predict worker process, started and given each model off the request path.

    A model the worker does not hold yet is predicted in the node (at nice +10) meanwhile:
    starting Python and loading a 3,000-tree model take ~0.5 s, which must not count
    against the starvation guard's patience nor keep callers waiting."""

    def __init__(self, serialiser: ThreadPoolExecutor, count_failure: Callable[[], None]) -> None:
        self.worker: HeavyWorker | None = None
        self._serialiser = serialiser  # to_ubj: ~10 ms for a big model, kept off the loop
        self._count_failure = count_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._preparing: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._closed = False
        self._refused: dict[int, None] = {}  # boosters the worker could not load: in the node for good

    def ready(self, adapter: Any) -> HeavyWorker | None:
        """The worker, if it holds this booster now; else None, and it gets it in the background."""
        loop = asyncio.get_running_loop()
        worker = self.worker
        if worker is not None and (self._loop is not loop or not worker.alive()):
            if not worker.closed and worker.process.poll() is not None:  # it exited on its own
                log.warning("heavy predict worker %s exited (%s)", worker.pid, worker.process.poll())
                self._count_failure()
            worker.close()  # or it is bound to another event loop (a test's earlier asyncio.run)
            self.worker = worker = None
        if worker is not None and worker.holds(adapter.token):
            return worker
        if adapter.token in self._refused:
            return None
        if self._preparing is not None and self._preparing.get_loop() is not loop:
            self._preparing = None  # left pending by a loop that ended
        if self._preparing is None and not self._closed and time.monotonic() >= self._retry_at:
            self._preparing = loop.create_task(self._prepare(adapter))
        return None

    async def predict(self, worker: HeavyWorker, token: int, x: np.ndarray) -> tuple[Predictions, float]:
        async with worker.lock:
            return await worker.predict(token, x)

    async def _prepare(self, adapter: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.worker is None:
                worker = await HeavyWorker.start()
                if self._closed:
                    worker.close()
                    return
                self.worker, self._loop = worker, loop
                log.debug("heavy predict worker %s runs as %s", worker.pid, worker.runs_as)
            worker = self.worker
            ubj = await loop.run_in_executor(self._serialiser, adapter.to_ubj)
            async with worker.lock:
                if not worker.holds(adapter.token):
                    await worker.load(adapter.token, ubj)
        except ModelRefused as exc:
            log.warning("%s: predicting it in the node", exc)
            self._count_failure()
            self._refused[adapter.token] = None
            if len(self._refused) > _MAX_COSTS:
                self._refused.pop(next(iter(self._refused)))
        except Exception as exc:  # cannot start, died, or to_ubj failed: try again later
            log.warning("heavy predict worker not ready (%s): predicting in the node", exc)
            self._count_failure()
            self._retry_at = time.monotonic() + WORKER_RETRY_S
        finally:
            self._preparing = None

    def close(self) -> None:
        self._closed = True
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def _portable(model: LoadedModel) -> bool:
    """Whether a heavy predict worker can take the model (an XGBoost booster: it has a UBJ form)."""
    return hasattr(model.adapter, "to_ubj")


def _split(batch: list[_Request], whole: Predictions) -> list[Outcome]:
    """Each request's share of one predict over the whole batch."""
    if len(batch) == 1:
        return [whole]
    out: list[Outcome] = []
    start = 0
    for request in batch:
        stop = start + len(request.x)
        out.append(whole.rows(start, stop))
        start = stop
    return out


def _lower_starved_thread(nice: int) -> None:
    runs_as = lower_this_thread("nice", nice)
    log.debug("starved predict thread %s runs as %s", threading.get_native_id(), runs_as)


def _deliver(batch: list[_Request], outcomes: list[Outcome]) -> None:
    for request, outcome in zip(batch, outcomes, strict=True):
        future = request.future
        if future is None or future.done():  # the caller gave up
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _unheeded(running: asyncio.Future[Any]) -> None:
    """A starved predict's copy under SCHED_IDLE ended; its callers were answered by the other."""
    if not running.cancelled():
        running.exception()  # retrieved: asyncio would log an error never retrieved


def _stamp(batch: list[_Request], start: int, end: int, rows: int) -> None:
    for request in batch:
        if request.times is not None:
            request.times += (start, end, rows)


def _single(outcomes: list[Outcome]) -> Predictions:
    outcome = outcomes[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _validated(model: LoadedModel, rows: Sequence[Row] | np.ndarray) -> np.ndarray:
    """The request's rows as a float32 matrix of the model's width, or `InvalidInput`."""
    if not isinstance(rows, np.ndarray):
        # A value beyond float32 becomes inf, which to_matrix refuses with InvalidInput; the
        # cast's overflow warning is expected, not an error (it is one under filterwarnings=error).
        with np.errstate(over="ignore"):
            return model.to_matrix(rows)
    n_features = model.n_features
    if rows.ndim != 2 or (n_features and rows.shape[1] != n_features):
        raise InvalidInput(f"expected a matrix of {n_features} columns, got shape {list(rows.shape)}")
    return rows if rows.dtype == np.float32 else rows.astype(np.float32)
