"""Lower the OS scheduling priority of the calling thread (Linux: a thread's own nice value).

Used by the batcher's pool for heavy models (node.batching): its threads run at a
higher nice value, so when the CPU is contended the kernel hands it first to the
event loop and to light models' predicts, and the heavy model gets what is left
(all of an otherwise idle machine). Raising nice needs no privilege; lowering it
again would, so a thread is lowered once, at start, and stays in that pool.

On Linux each thread has its own nice value, set through `setpriority` with the
thread's id (`threading.get_native_id`). Elsewhere the call would renice the
whole process, so it is skipped there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("modelcache.priority")


def lower_this_thread(nice: int) -> int | None:
    """Add `nice` to the calling thread's nice value; its new value, or None where not possible."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(current + nice, 19)
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:  # a seccomp profile may forbid it: run at normal priority
        log.warning("cannot lower the priority of thread %s: %s", tid, exc)
        return None
    return target


def thread_nice() -> int:
    """The calling thread's nice value (Linux; the process's elsewhere)."""
    tid = threading.get_native_id() if sys.platform.startswith("linux") else 0
    return os.getpriority(os.PRIO_PROCESS, tid)
