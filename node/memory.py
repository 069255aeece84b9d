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
(fragmentation), so JSON artifacts are converted to UBJ (`json_to_ubj`) and
the served booster is built from that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
from typing import Any

from coordinator.registry import ModelMetadata

XGB_RESIDENT_FACTOR = 1.5
"""Resident bytes per byte of UBJ serialisation (an upper bound of 0.8-1.5 measured)."""
MODEL_OVERHEAD_BYTES = 64 * 1024
"""Fixed cost of any loaded model (booster object, adapter, metadata)."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
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


def json_to_ubj(raw: bytes) -> bytes:
    """The UBJ form of a verified XGBoost JSON model, with the parse's heap returned.

    Measured: a booster loaded straight from a 17 MB JSON stays at ~31 MB resident
    after `malloc_trim` (its trees are interleaved with the parse's freed
    fragments); the same model rebuilt from UBJ in a trimmed heap takes ~13 MB.
    """
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    ubj = bytes(booster.save_raw("ubj"))
    del booster, raw
    trim()
    return ubj


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
