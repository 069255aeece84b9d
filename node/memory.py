"""What a loaded model costs in memory, and giving freed heap back to the OS.

The byte budget (`MODELCACHE_CACHE_MAX_BYTES`) charges each model what it
costs *resident*, not its file size: a 48 MB JSON model and its 26 MB UBJ
twin both occupy ~38 MB once loaded.

How the cost is measured, and why: from the model's own structure, the size of
its UBJ serialisation (for a `.ubj` artifact that is the file itself; a JSON
model is re-serialised once at load; a non-XGBoost joblib estimator is
charged its pickled size), times `XGB_RESIDENT_FACTOR`, plus a fixed
per-model overhead. Measured on this machine kind (RSS after `malloc_trim(0)`
before and after a load, depth 2-8, 5-4000 trees, JSON and UBJ), resident
memory was 0.8-1.5x the UBJ size, so 1.5x is a bound, not an average. The
alternative, RSS before/after each load, was rejected: it is only right if
nothing else allocates or frees meanwhile, but evictions free whole models
when the last in-flight request drops its reference, predictions and other
loads allocate on other threads, and serialising every deserialisation to keep
the figure clean would make loads of different models wait on each other
(the cache's rule is single-flight per key, never one global load lock). A
structural cost is deterministic, the same on every node, and testable.

Loading a JSON model leaves ~10x its size in freed-but-unreturned heap (glibc
keeps it for reuse): `trim()` (`malloc_trim(0)`) after every load and eviction
returns it, which is what lets the budget bound RSS at all. Even trimmed, a
booster parsed from JSON keeps ~2.3x the resident memory of its UBJ twin
(fragmentation), so JSON artifacts are converted to UBJ in a short-lived
forked child (`json_to_ubj`) and the served booster is built from that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import select
import signal
import time
import warnings
from typing import Any

from coordinator.registry import ModelMetadata

XGB_RESIDENT_FACTOR = 1.5
"""Resident bytes per byte of UBJ serialisation (an upper bound of 0.8-1.5 measured)."""
MODEL_OVERHEAD_BYTES = 64 * 1024
"""Fixed cost of any loaded model (booster object, adapter, metadata)."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 10
"""Allocations this big always get their own mapping, returned to the OS on free."""


def _libc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # glibc raises its mmap threshold after each big free (up to 32 MB), so artifact
        # bytes read later land in the heap and fragment it; a fixed threshold stops that.
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _libc_trim()


def trim() -> bool:
    """Return freed heap to the OS (glibc `malloc_trim(0)`); False where unsupported."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def rss_bytes() -> int:
    """This process's resident set size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def json_to_ubj(raw: bytes, timeout_s: float = 120.0) -> bytes:
    """The UBJ form of a verified XGBoost JSON model, parsed where its heap cannot stay.

    Parsing a JSON model costs ~10x its size in heap that stays fragmented even
    after `malloc_trim` (a booster loaded straight from a 17 MB JSON sits at
    ~31 MB resident, its UBJ twin at ~13 MB, and the freed fragments keep the
    node's RSS up). So the parse runs in a forked child that writes the UBJ
    bytes to a pipe and exits: its whole heap goes back to the OS with it. A
    child that fails, hangs past `timeout_s` or cannot be forked, or an XGBoost
    running OpenMP with several threads, falls back to parsing here, then trimming.
    """
    # libgomp cannot fork once it has run a parallel region with a thread team (the
    # child hangs), so only a single-threaded XGBoost (as every node runs) forks.
    if hasattr(os, "fork") and os.environ.get("OMP_NUM_THREADS") == "1":
        ubj = _parse_in_child(raw, timeout_s)
        if ubj is not None:
            return ubj
    return _parse_here(raw)


def _parse_here(raw: bytes) -> bytes:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    ubj = bytes(booster.save_raw("ubj"))
    del booster
    trim()
    return ubj


def _parse_in_child(raw: bytes, timeout_s: float) -> bytes | None:
    # Imported here first: the node imports XGBoost lazily (node.runtimes.import_libraries, on
    # a background thread), and a child forked while another thread holds that import's lock
    # would wait on it for ever; once imported, the child finds the module ready.
    import xgboost  # noqa: F401

    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a threaded process: the child only parses
            # and exits, and a child that deadlocks is killed at the timeout below.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the child: parse, write, exit without running the parent's cleanup
        status = 1
        try:
            os.close(read_fd)
            data = _parse_here(raw)
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    return b"".join(chunks) if status == 0 and chunks else None


def estimate_cost(meta: ModelMetadata) -> int:
    """The cost of a model before it is loaded, from its metadata: an upper bound.

    A JSON artifact is never smaller than its UBJ twin, so the same factor on the
    file size bounds both.
    """
    return int(meta.size_bytes * XGB_RESIDENT_FACTOR) + MODEL_OVERHEAD_BYTES


def resident_cost(model: Any) -> int:
    """The bytes a loaded model (`node.runtime.LoadedModel`) is charged against the budget."""
    meta = model.meta
    adapter = model.adapter
    booster = getattr(adapter, "booster", None)
    if booster is None and meta.format == "joblib":
        estimator = getattr(adapter, "estimator", None)
        try:
            return len(pickle.dumps(estimator, protocol=5)) + MODEL_OVERHEAD_BYTES
        except Exception:  # unpicklable after all: fall back to the artifact's size
            return estimate_cost(meta)
    if meta.format == "xgboost-ubj":
        ubj = meta.size_bytes
    elif booster is not None:
        ubj = len(booster.save_raw("ubj"))
    else:
        return estimate_cost(meta)
    return int(ubj * XGB_RESIDENT_FACTOR) + MODEL_OVERHEAD_BYTES
