"""Lower the OS scheduling priority of the calling thread (Linux: each thread has its own).

Used by the batcher's pool for heavy models (node.batching): its threads run below
the event loop and the light models' predicts, so when the CPU is contended the
kernel hands it to those first and the heavy model gets what is left (all of an
otherwise idle machine). Two ways, chosen by `HEAVY_PREDICT_SCHED`:

- `idle`: the `SCHED_IDLE` policy. The kernel preempts such a thread as
  soon as a normal thread wakes on its CPU (the event loop on a new request, a
  light predict), so a 3,000-tree predict never holds a core the loop wants.
  Under contention it gets the smallest share of all.
- `nice` (default): the thread's nice value raised by `HEAVY_PREDICT_NICE`. The kernel (EEVDF)
  lets a nice thread run out its slice first (1.4 ms on a 2-core machine), which a
  small request then waits out; in exchange it keeps ~1/10 of a nice-0 thread's
  share (nice +10) when other processes fill the CPU (docs/design.md, Isolation).
  SCHED_IDLE is not the default: its thread, holding or handed the GIL while other
  processes fill the CPUs, gets no CPU to let go of it, and the event loop waits (~1 s).
- `process`: heavy XGBoost predicts in SCHED_IDLE worker processes (node.heavy_worker),
  which have their own GIL; this pool's threads, at nice, serve the other heavy models.

Both only lower: no privilege is needed (a seccomp profile may still forbid it:
then the thread falls back to nice, or stays at normal priority, and a warning
says so), and since going back would need one, a thread is lowered once, at
start, and stays in its pool. On Linux `sched_setscheduler(0, ...)` and
`setpriority(PRIO_PROCESS, tid, ...)` act on the calling thread; elsewhere they
would change the whole process, so they are skipped there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Literal

log = logging.getLogger("modelcache.priority")

HeavySched = Literal["idle", "nice", "process"]
LINUX = sys.platform.startswith("linux")


def lower_this_thread(sched: HeavySched, nice: int) -> str:
    """Lower the calling thread as `sched` says; what it now runs as ("SCHED_IDLE", "nice 10", "normal")."""
    if not LINUX:
        return "normal"
    if sched == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError as exc:
            log.warning("cannot run heavy predicts as SCHED_IDLE (%s): using nice +%d", exc, nice)
    return _raise_nice(nice)


def _raise_nice(nice: int) -> str:
    if nice <= 0:
        return "normal"
    tid = threading.get_native_id()
    try:
        target = min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19)
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:
        log.warning("cannot lower the priority of thread %s: %s", tid, exc)
        return "normal"
    return f"nice {target}"


def thread_priority() -> tuple[str, int]:
    """The calling thread's policy ("idle" or "normal") and nice value (Linux; the process's elsewhere)."""
    tid = threading.get_native_id() if LINUX else 0
    idle = LINUX and os.sched_getscheduler(tid) == os.SCHED_IDLE
    return ("idle" if idle else "normal"), os.getpriority(os.PRIO_PROCESS, tid)
