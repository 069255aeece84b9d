"""When a heavy model starves under SCHED_IDLE, it runs at nice +10 until the CPU frees up.

A SCHED_IDLE thread gets a CPU only when nothing else on it wants to run. On a node
whose CPUs other work fills (another node of a local cluster, a busy process in the
same cgroup, this node's own light traffic at saturation) a heavy model would get
almost nothing: its queue fills and every request answers 429. Under nice +10 it
still gets ~1/10 of a nice-0 thread's share.

So the batcher times each heavy predict, wall time from its submission against its
CPU time, and tells this guard:

- still running under SCHED_IDLE after `patience` (`starved_ratio` times its expected
  CPU, and at least `min_wait_s` beyond it: short predicts' scheduling noise is not
  starvation), or finished there with less than 1/`starved_ratio` of a CPU: the
  model is *starved*. Its predicts go to the nice pool, the late one included (the
  batcher runs that batch again there and answers from it);
- run at nice +10 and given at least 1/`free_ratio` of a CPU: the CPUs have room
  again, its next predicts go back to SCHED_IDLE, which yields to the event loop at
  once (node.priority).

On an idle machine, and beside light traffic that leaves a core, no predict starves
and nothing changes (bench_isolation, docs/design.md "Isolation between models").
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

log = logging.getLogger("modelcache.batching")

STARVED_RATIO = 10.0
"""A predict under SCHED_IDLE whose wall time is this many times its CPU time got under 1/10 of a CPU."""
MIN_WAIT_S = 0.05
"""...and it must have waited at least this long beyond its CPU time."""
FREE_RATIO = 2.0
"""A predict at nice +10 whose wall time is under this many times its CPU time had half a CPU or more."""
_MAX_KEYS = 4096


class StarvationGuard:
    """Per model (lane key): whether its heavy predicts starve under SCHED_IDLE."""

    def __init__(
        self,
        starved_ratio: float = STARVED_RATIO,
        min_wait_s: float = MIN_WAIT_S,
        free_ratio: float = FREE_RATIO,
    ) -> None:
        self.starved_ratio, self.min_wait_s, self.free_ratio = starved_ratio, min_wait_s, free_ratio
        self._starved: dict[Hashable, None] = {}  # insertion-ordered: the oldest is forgotten first
        self.events = 0
        """Times a model was found starved (each moves it to the nice pool)."""

    def starved(self, key: Hashable) -> bool:
        """Whether `key`'s heavy predicts run at nice +10 rather than under SCHED_IDLE."""
        return key in self._starved

    def patience(self, expected_cpu_s: float) -> float:
        """How long a predict expected to cost `expected_cpu_s` may run under SCHED_IDLE unstarved."""
        return max(self.starved_ratio * expected_cpu_s, expected_cpu_s + self.min_wait_s)

    def starving(self, key: Hashable, expected_cpu_s: float) -> bool:
        """A predict of `key` under SCHED_IDLE is still running after `patience`: starved.
        True when that newly marks the model starved."""
        if key in self._starved:
            return False
        return self._mark(
            key,
            f"a predict expected to take {expected_cpu_s * 1e3:.0f} ms of CPU is still running "
            f"after {self.patience(expected_cpu_s) * 1e3:.0f} ms",
        )

    def observe(self, key: Hashable, wall_s: float, cpu_s: float) -> bool:
        """Record one heavy predict of `key`, run where `starved(key)` said; True when that newly
        marks the model starved."""
        if key not in self._starved:
            if wall_s >= self.starved_ratio * cpu_s and wall_s - cpu_s >= self.min_wait_s:
                return self._mark(
                    key, f"a predict got {100 * cpu_s / wall_s:.0f}% of a CPU over {wall_s * 1e3:.0f} ms"
                )
        elif wall_s < self.free_ratio * cpu_s:
            del self._starved[key]
            log.info("model %s is no longer starved: its predicts run under SCHED_IDLE again", _name(key))
        return False

    def _mark(self, key: Hashable, why: str) -> bool:
        self.events += 1
        self._starved[key] = None
        if len(self._starved) > _MAX_KEYS:
            self._starved.pop(next(iter(self._starved)))
        log.warning(
            "model %s is starved under SCHED_IDLE (%s): its predicts run at nice +10 until the CPUs "
            "have room again",
            _name(key),
            why,
        )
        return True


def _name(key: Hashable) -> str:
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
