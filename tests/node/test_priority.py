"""node.priority: a heavy predict thread lowers itself, and only itself (real threads, real kernel)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from node.priority import lower_this_thread, thread_priority

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
