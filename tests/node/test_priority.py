"""node.priority: a heavy predict thread lowers itself, and only itself (real threads, a real node)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from coordinator.registry import Registry
from node.priority import lower_this_thread, thread_priority
from tests.helpers import NodeProcess, PublishFn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
T = TypeVar("T")


def in_new_thread(fn: Callable[[], T]) -> T:
    """`fn`'s result, run in a thread of its own (a lowered thread can never be raised again)."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(10)
    return out[0]


def test_idle_puts_the_calling_thread_alone_under_sched_idle() -> None:
    base = thread_priority()
    said, seen = in_new_thread(lambda: (lower_this_thread("idle", 10), thread_priority()))
    assert (said, seen) == ("SCHED_IDLE", ("idle", base[1]))
    assert thread_priority() == base  # the caller's thread (here: the event loop's) is untouched


def test_nice_raises_the_calling_threads_nice_value_only() -> None:
    base = thread_priority()
    said, seen = in_new_thread(lambda: (lower_this_thread("nice", 3), thread_priority()))
    target = min(base[1] + 3, 19)
    assert (said, seen) == (f"nice {target}", ("normal", target))
    assert thread_priority() == base


def test_nice_zero_leaves_the_thread_as_it_was() -> None:
    base = thread_priority()
    assert in_new_thread(lambda: (lower_this_thread("nice", 0), thread_priority())) == ("normal", base)


def test_where_sched_idle_is_forbidden_the_thread_falls_back_to_nice_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A seccomp profile that refuses sched_setscheduler cannot be set up here: the refusal is simulated.
    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    base = thread_priority()
    said, seen = in_new_thread(lambda: (lower_this_thread("idle", 4), thread_priority()))
    target = min(base[1] + 4, 19)
    assert (said, seen) == (f"nice {target}", ("normal", target))
    assert "cannot run heavy predicts as SCHED_IDLE" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def thread_policies(pid: int) -> list[tuple[int, int]]:
    """(policy, nice) of each thread of process `pid`, from /proc (policy 5 is SCHED_IDLE)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out.append((int(fields[38]), int(fields[16])))  # stat fields 41 (policy) and 19 (nice)
    return out


@pytest.mark.parametrize("sched", ["idle", "nice"])
def test_a_node_runs_its_heavy_predicts_on_threads_lowered_as_configured(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess], sched: str
) -> None:
    publish("m", "1.0")
    # Every predict counts as heavy at 1 us: the node's batches go to its low-priority pool.
    node = node_process(
        registry.root, MODELCACHE_HEAVY_PREDICT_MS="0.001", MODELCACHE_HEAVY_PREDICT_SCHED=sched
    )
    rows = [[0.1, 0.2, 0.3, 0.4]] * 50
    for _ in range(4):
        answer = httpx.post(f"{node.url}/api/v1/models/m/batch_predict", json={"instances": rows}, timeout=10)
        assert answer.status_code == 200
    assert node.proc is not None
    policies = thread_policies(node.proc.pid)
    if sched == "idle":
        assert any(policy == os.SCHED_IDLE for policy, _ in policies)
    else:
        assert not any(policy == os.SCHED_IDLE for policy, _ in policies)
        assert any(nice == 10 for _, nice in policies)
    assert any(policy == os.SCHED_OTHER and nice == 0 for policy, nice in policies)  # the loop's
