from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from coordinator.registry import Registry
from node.batching import Batcher
from node.errors import InvalidInput, ModelOverloaded
from node.metrics import NodeMetrics
from node.priority import HeavySched, thread_priority
from node.runtime import LoadedModel, Predictions, deserialize
from tests.helpers import FEATURES, PublishFn

KEY = ("m", "1.0")


class Spy:
    """Wraps a model's adapter: records each predict call's row count, can hold calls, can fail rows."""

    def __init__(self, real: Any, bad_value: float | None = None) -> None:
        self.real, self.bad_value = real, bad_value
        self.task, self.n_features = real.task, real.n_features
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def predict(self, x: np.ndarray) -> Predictions:
        self.sizes.append(len(x))
        self.started.set()
        assert self.release.wait(10)
        if self.bad_value is not None and (x == self.bad_value).any():
            raise ValueError("this row breaks the model")
        return self.real.predict(x)


@pytest.fixture
def model(registry: Registry, publish: PublishFn) -> LoadedModel:
    meta = publish("m", "1.0", objective="multi:softprob")
    return deserialize(meta, registry.artifact_path(meta).read_bytes())


def _spied(model: LoadedModel, **kw: Any) -> tuple[LoadedModel, Spy]:
    spy = Spy(model.adapter, **kw)
    return LoadedModel(model.meta, spy), spy


def _rows(i: int) -> list:
    rng = np.random.default_rng(i)
    n = 1 + i % 3
    rows: list = rng.normal(size=(n, 4)).round(3).tolist()
    if i % 4 == 0:  # some requests send {name: value} maps
        rows = [dict(zip(FEATURES, r, strict=True)) for r in rows]
    return rows


def _same(a: Predictions, b: Predictions) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def _run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


@pytest.mark.parametrize("inline_max_rows", [0, 1])
def test_concurrent_requests_get_what_sequential_ones_get(model: LoadedModel, inline_max_rows: int) -> None:
    metrics = NodeMetrics()
    batcher = Batcher(64, metrics, inline_max_rows=inline_max_rows)
    requests = [_rows(i) for i in range(40)]

    async def main() -> list[Predictions]:
        return await asyncio.gather(*(batcher.predict(KEY, model, r) for r in requests))

    for rows, got in zip(requests, _run(main), strict=True):
        _same(got, model.predict(rows))
    count = metrics.registry.get_sample_value("modelcache_batch_rows_count", {"model_type": "m"})
    total = metrics.registry.get_sample_value("modelcache_batch_rows_sum", {"model_type": "m"})
    assert total == sum(len(r) for r in requests)
    assert count == batcher.calls < len(requests)  # they shared predict calls
    assert batcher._lanes == {}  # the lane retires when drained
    batcher.close()


def test_requests_arriving_during_a_predict_form_the_next_batch(model: LoadedModel) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=0)  # the predict-thread path
    spy.release.clear()

    async def main() -> list[Predictions]:
        first = asyncio.create_task(batcher.predict(KEY, spied, _rows(0)))
        assert await asyncio.to_thread(spy.started.wait, 10)  # first predict in flight
        later = [asyncio.create_task(batcher.predict(KEY, spied, _rows(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        spy.release.set()
        return await asyncio.gather(first, *later)

    results = _run(main)
    assert spy.sizes == [1, 2 + 3 + 1]  # the lone request alone, then the three queued together
    for i, got in enumerate(results):
        _same(got, model.predict(_rows(i)))
    batcher.close()


def test_a_lone_request_is_predicted_at_once_without_a_timer(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=0)  # the predict-thread path
    spy.release.clear()

    async def main() -> Predictions:
        loop = asyncio.get_running_loop()

        def no_timers(*_a: object, **_k: object) -> None:
            raise AssertionError("the batcher set a timer")

        task = asyncio.create_task(batcher.predict(KEY, spied, _rows(1)))
        # Nothing else arrives; the predict must start on its own, and no timer may be set.
        monkeypatch.setattr(loop, "call_later", no_timers)
        monkeypatch.setattr(loop, "call_at", no_timers)
        assert await loop.run_in_executor(None, spy.started.wait, 10)
        monkeypatch.undo()
        spy.release.set()
        return await task

    _same(_run(main), model.predict(_rows(1)))
    assert spy.sizes == [2]
    batcher.close()


def test_a_lone_small_request_is_predicted_on_the_loop_when_inline_is_on(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=1)
    threads: list[int] = []
    real = spy.predict
    monkeypatch.setattr(spy, "predict", lambda x: threads.append(threading.get_ident()) or real(x))

    async def main() -> Predictions:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "call_later", lambda *a: pytest.fail("timer"))
        monkeypatch.setattr(loop, "call_at", lambda *a: pytest.fail("timer"))
        return await batcher.predict(KEY, spied, [[0.1, 0.2, 0.3, 0.4]])

    _same(_run(main), model.predict([[0.1, 0.2, 0.3, 0.4]]))
    assert threads == [threading.get_ident()]  # no hop to the predict thread
    assert spy.sizes == [1] and batcher._lanes == {}
    batcher.close()


def test_an_invalid_request_fails_alone(model: LoadedModel) -> None:
    batcher = Batcher(64)
    requests: list[Any] = [_rows(i) for i in range(6)]
    requests[3] = [[1.0, 2.0]]  # wrong width: refused before stacking

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(batcher.predict(KEY, model, r) for r in requests), return_exceptions=True
        )

    results = _run(main)
    assert isinstance(results[3], InvalidInput) and "expected 4 features" in str(results[3])
    for i, got in enumerate(results):
        if i != 3:
            _same(got, model.predict(requests[i]))
    batcher.close()


def test_a_row_that_breaks_the_batched_predict_fails_only_its_request(model: LoadedModel) -> None:
    spied, spy = _spied(model, bad_value=666.0)
    batcher = Batcher(64)
    requests = [_rows(i) for i in range(8)]
    requests[5] = [[666.0, 0.0, 0.0, 0.0]]  # valid input, but the model raises on it

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(batcher.predict(KEY, spied, r) for r in requests), return_exceptions=True
        )

    results = _run(main)
    assert isinstance(results[5], ValueError)
    for i, got in enumerate(results):
        if i != 5:
            _same(got, model.predict(requests[i]))
    assert spy.sizes[0] > 1  # the failing call was a real batch, retried request by request
    batcher.close()


def test_max_rows_bounds_every_predict_call(model: LoadedModel) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(8)
    requests = [[[0.1 * i, 0.2, 0.3, 0.4]] * 3 for i in range(12)] + [[[1.0, 2.0, 3.0, 4.0]] * 20]

    async def main() -> list[Predictions]:
        return await asyncio.gather(*(batcher.predict(KEY, spied, r) for r in requests))

    results = _run(main)
    assert max(s for s in spy.sizes if s != 20) <= 8
    assert 6 in spy.sizes  # two requests of 3 rows share a call; a third would pass 8
    assert 20 in spy.sizes  # a request larger than the bound goes alone, unsplit
    assert sum(spy.sizes) == 12 * 3 + 20
    for rows, got in zip(requests, results, strict=True):
        _same(got, model.predict(rows))
    batcher.close()


def test_a_cancelled_caller_does_not_stall_the_others(model: LoadedModel) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=0)  # the predict-thread path
    spy.release.clear()

    async def main() -> list[Any]:
        first = asyncio.create_task(batcher.predict(KEY, spied, _rows(0)))
        assert await asyncio.to_thread(spy.started.wait, 10)
        queued = [asyncio.create_task(batcher.predict(KEY, spied, _rows(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        queued[0].cancel()
        spy.release.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    results = _run(main)
    assert isinstance(results[1], asyncio.CancelledError)
    _same(results[2], model.predict(_rows(2)))
    assert spy.sizes == [1, 3]  # the cancelled request was dropped from the batch
    assert batcher._lanes == {}
    batcher.close()


def test_different_model_objects_never_share_a_call(model: LoadedModel) -> None:
    old, old_spy = _spied(model)
    new, new_spy = _spied(model)
    batcher = Batcher(64)

    async def main() -> None:
        await asyncio.gather(*(batcher.predict(KEY, old if i % 2 else new, _rows(i)) for i in range(10)))

    _run(main)
    assert sum(old_spy.sizes) == sum(len(_rows(i)) for i in range(1, 10, 2))
    assert sum(new_spy.sizes) == sum(len(_rows(i)) for i in range(0, 10, 2))
    batcher.close()


def test_v2_matrices_are_checked_and_batched(model: LoadedModel) -> None:
    batcher = Batcher(64)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)

    async def main() -> list[Any]:
        good = batcher.predict(KEY, model, x)
        bad = batcher.predict(KEY, model, np.zeros((2, 3), dtype=np.float32))
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = _run(main)
    _same(good, model.adapter.predict(x))
    assert isinstance(bad, InvalidInput) and "4 columns" in str(bad)
    batcher.close()


def test_a_slow_model_does_not_hold_up_the_others(model: LoadedModel) -> None:
    """A big model's predict in flight leaves the other models a thread (one thread used to serve all)."""
    big, big_spy = _spied(model)
    small, small_spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=0)  # both on the predict threads
    big_spy.release.clear()

    async def main() -> Predictions:
        held = asyncio.create_task(batcher.predict(("big", "1"), big, _rows(0)))
        assert await asyncio.to_thread(big_spy.started.wait, 10)  # the big predict holds a thread
        try:
            return await asyncio.wait_for(batcher.predict(("small", "1"), small, _rows(1)), 10)
        finally:
            big_spy.release.set()
            await held

    _same(_run(main), model.predict(_rows(1)))
    assert small_spy.sizes == [len(_rows(1))]
    batcher.close()


def test_a_full_model_queue_answers_overloaded_at_once_and_only_for_that_model(model: LoadedModel) -> None:
    spied, spy = _spied(model)
    batcher = Batcher(64, inline_max_rows=0, max_queued_rows=4)
    spy.release.clear()

    async def main() -> tuple[list[Predictions], ModelOverloaded]:
        first = asyncio.create_task(batcher.predict(KEY, spied, _rows(0)))  # in flight
        assert await asyncio.to_thread(spy.started.wait, 10)
        queued = [asyncio.create_task(batcher.predict(KEY, spied, [[1, 2, 3, 4]] * 2)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ModelOverloaded) as refused:  # 4 rows queued: the 5th is refused at once
            await batcher.predict(KEY, spied, [[1, 2, 3, 4]])
        other = await batcher.predict(("other", "1"), model, _rows(3))  # another model is unaffected
        spy.release.set()
        return [await first, *(await asyncio.gather(*queued)), other], refused.value

    results, refused = _run(main)
    assert len(results) == 4 and refused.code == "model_overloaded"
    assert "MODELCACHE_MODEL_QUEUE_MAX_ROWS=4" in str(refused)
    assert batcher._lanes == {}  # drained, counters back to zero with the lane gone
    batcher.close()


def test_one_request_larger_than_the_queue_bound_is_still_admitted_to_an_empty_queue(
    model: LoadedModel,
) -> None:
    batcher = Batcher(64, inline_max_rows=0, max_queued_rows=2)
    rows = [[1, 2, 3, 4]] * 10

    async def main() -> Predictions:
        return await batcher.predict(KEY, model, rows)

    _same(_run(main), model.predict(rows))
    batcher.close()


class Burner:
    """An adapter whose predict burns `cost_s` of CPU; records the thread and its (policy, nice)."""

    def __init__(self, real: Any, cost_s: float) -> None:
        self.real, self.cost_s = real, cost_s
        self.task, self.n_features = real.task, real.n_features
        self.seen: list[tuple[int, tuple[str, int]]] = []

    def predict(self, x: np.ndarray) -> Predictions:
        self.seen.append((threading.get_ident(), thread_priority()))
        end = time.thread_time() + self.cost_s
        while time.thread_time() < end:
            pass
        return self.real.predict(x)


@pytest.mark.parametrize("sched", ["idle", "nice"])
def test_a_model_whose_predicts_cost_more_than_the_bound_runs_at_low_priority_and_never_on_the_loop(
    model: LoadedModel, caplog: pytest.LogCaptureFixture, sched: HeavySched
) -> None:
    caplog.set_level(logging.INFO, logger="modelcache.batching")
    heavy_adapter, light_adapter = Burner(model.adapter, 0.02), Burner(model.adapter, 0.0)
    heavy, light = LoadedModel(model.meta, heavy_adapter), LoadedModel(model.meta, light_adapter)
    batcher = Batcher(64, inline_max_rows=1, heavy_predict_s=0.005, heavy_sched=sched, heavy_nice=5)
    base = thread_priority()
    # SCHED_IDLE leaves the nice value alone; nice +5 leaves the policy normal.
    lowered = ("idle", base[1]) if sched == "idle" else ("normal", min(base[1] + 5, 19))
    row = [[0.1, 0.2, 0.3, 0.4]]

    async def main() -> int:
        await batcher.predict(("heavy", "1"), heavy, row)  # cost unknown yet: inline, like any lone row
        for _ in range(2):
            await batcher.predict(("heavy", "1"), heavy, row)
            await batcher.predict(("light", "1"), light, row)
        await asyncio.gather(*(batcher.predict(("light", "1"), light, row) for _ in range(4)))
        return threading.get_ident()

    loop_thread = _run(main)
    assert batcher.is_heavy(("heavy", "1")) and not batcher.is_heavy(("light", "1"))
    first, *later = heavy_adapter.seen
    assert first == (loop_thread, base)
    assert later and all(t != loop_thread and priority == lowered for t, priority in later)
    assert light_adapter.seen[0][0] == loop_thread  # a light lone row stays on the loop
    assert any(t != loop_thread for t, _ in light_adapter.seen)  # the concurrent ones took a thread
    assert all(priority == base for _, priority in light_adapter.seen)  # never a lowered thread
    assert "model heavy 1 is heavy: low-priority predicts" in caplog.text

    # Cheap again (say a new version behind the same key): light after a few predicts.
    heavy_adapter.cost_s = 0.0
    for _ in range(10):
        _run(lambda: batcher.predict(("heavy", "1"), heavy, row))
    assert not batcher.is_heavy(("heavy", "1"))
    assert "model heavy 1 is light again" in caplog.text
    batcher.close()


class PerRowBurner(Burner):
    """A light model: `cost_s` of CPU per row (a lone row is cheap, 1,000 rows are not)."""

    def predict(self, x: np.ndarray) -> Predictions:
        self.seen.append((threading.get_ident(), thread_priority()))
        end = time.thread_time() + self.cost_s * len(x)
        while time.thread_time() < end:
            pass
        return self.real.predict(x)


def test_large_batches_of_a_light_model_do_not_send_its_small_requests_to_the_low_priority_pool(
    model: LoadedModel,
) -> None:
    # A client sending 1,000-row batches must not make every other client's lone rows of that
    # model low-priority: those batches go to the low-priority pool, the lone rows do not.
    adapter = PerRowBurner(model.adapter, 20e-6)  # 20 us a row: 1,000 rows = 20 ms
    light = LoadedModel(model.meta, adapter)
    batcher = Batcher(1024, inline_max_rows=1, heavy_predict_s=0.005, heavy_sched="idle")
    base = thread_priority()
    row, batch = [[0.1, 0.2, 0.3, 0.4]], [[0.1, 0.2, 0.3, 0.4]] * 1000
    key = ("light", "1")

    async def main() -> int:
        for _ in range(3):
            await batcher.predict(key, light, batch)
            await batcher.predict(key, light, row)
        return threading.get_ident()

    loop_thread = _run(main)
    batches, rows = adapter.seen[0::2], adapter.seen[1::2]
    assert all(priority == ("idle", base[1]) for _, priority in batches[1:])  # known heavy: lowered
    assert all((t, priority) == (loop_thread, base) for t, priority in rows)
    assert batcher.is_heavy(key, 1000) and not batcher.is_heavy(key, 1)
    batcher.close()
