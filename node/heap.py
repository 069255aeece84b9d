"""Short garbage-collector pauses on the request path: the start-up heap is frozen after warm-up.

CPython's cyclic collector stops the event loop (it holds the GIL) for a whole
pass, and a full (oldest-generation) pass walks every container object in the
process: ~155,000 after start-up (FastAPI, pydantic, the gRPC and Redis
clients, the models' metadata), 30-90 ms here. Every 1,000-row JSON batch
allocates a few thousand lists, so under such batches a full pass came every
second or so, and each one was a 30-90 ms stall for every model's requests
(the small model's p99 in benchmarks/bench_isolation.py).

`gc.freeze()` moves every object alive at that point into a permanent
generation that later passes skip; the objects requests create are still
collected as before. Collect first, so no garbage is frozen with the rest.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("modelcache.heap")


def freeze_startup_heap() -> int:
    """Collect, then exempt every surviving object from later passes; how many were frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    took_ms = (time.perf_counter() - started) * 1e3
    log.info("froze %d start-up objects out of the collector (%.0f ms)", frozen, took_ms)
    return frozen
