"""The XGBoost runtime: native `.ubj`/`.json` boosters, predicted through XGBoost's C API.

Formats `xgboost-ubj` and `xgboost-json` load natively (no pickle).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import threading
from typing import Any

import numpy as np
import xgboost as xgb

from node.runtimes.base import BINARY, MULTICLASS, REGRESSION, Predictions

FORMATS = ("xgboost-ubj", "xgboost-json")
PLATFORM = "xgboost"
_TOKENS = itertools.count(1)


# Objectives whose dense predict is exactly XGBoost's own inplace_predict on a
# float32 matrix; anything else (and categorical models) keeps inplace_predict.
FAST_OBJECTIVES = frozenset(
    {
        "binary:logistic",
        "binary:logitraw",
        "binary:hinge",
        "multi:softprob",
        "multi:softmax",
        "reg:squarederror",
        "reg:squaredlogerror",
        "reg:logistic",
        "reg:pseudohubererror",
        "reg:absoluteerror",
        "reg:gamma",
        "reg:tweedie",
        "count:poisson",
    }
)

_U64P = ctypes.POINTER(ctypes.c_uint64)
_F32P = ctypes.POINTER(ctypes.c_float)
# JSON array interface (version 3) of a C-contiguous float32 matrix; only the
# pointer and the shape change between calls, so the rest is formatted once.
_DENSE = b'{"data": [%d, true], "shape": [%d, %d], "typestr": "<f4", "version": 3}'


class DensePredictor:
    """`XGBoosterPredictFromDense` called directly, with everything but the data prepared once.

    `Booster.inplace_predict` rebuilds its JSON config, inspects the input's type
    and wraps the output on every call: about half of a single-row predict. Here
    the config is built at load and a call formats one small byte string, calls
    C, and copies the output. Thread-safe: every buffer is per call, and XGBoost
    keeps the prediction it returns in a per-thread entry, which is copied before
    this thread predicts again.
    """

    def __init__(self, booster: Any) -> None:
        self._booster = booster  # holds the handle alive
        self._handle = booster.handle
        # Item access gives this object its own function pointer, so setting its
        # argtypes leaves xgboost's attribute on the shared library untouched.
        fn = xgb.core._LIB["XGBoosterPredictFromDense"]
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(_U64P),
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(_F32P),
        ]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.n_features = int(booster.num_features())
        # The keys inplace_predict sends (value prediction, all trees, NaN is missing).
        self._config = json.dumps(
            {
                "type": 0,
                "training": False,
                "iteration_begin": 0,
                "iteration_end": 0,
                "missing": math.nan,
                "strict_shape": False,
                "cache_id": 0,
            }
        ).encode()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs for a float32 matrix of `n_features` columns, flat (row-major)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, m = x.shape
        shape, dims, preds = _U64P(), ctypes.c_uint64(), _F32P()
        interface = _DENSE % (x.ctypes.data, n, m)
        if self._fn(self._handle, interface, self._config, None, shape, dims, preds) != 0:
            raise xgb.core.XGBoostError(xgb.core._LIB.XGBGetLastError().decode())
        size = 1
        for i in range(dims.value):
            size *= shape[i]
        # string_at copies out of XGBoost's buffer before anything else can overwrite it.
        return np.frombuffer(ctypes.string_at(preds, size * 4), dtype=np.float32)


class BoosterAdapter:
    """A native `xgboost.Booster`; predicts through `DensePredictor` where that is exact."""

    def __init__(self, booster: Any) -> None:
        booster.set_param({"nthread": 1})  # the default spins an OpenMP thread after each call
        self.booster = booster
        self.token = next(_TOKENS)
        """Names this loaded booster to heavy predict workers (node.heavy_worker), never reused."""
        self.n_features = int(booster.num_features())
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        self.objective = objective
        if objective in ("binary:logistic", "binary:hinge"):
            self.task = BINARY
        elif objective.startswith("multi:"):
            self.task = MULTICLASS
        else:
            self.task = REGRESSION
        self.dense = self._fast_path(booster)

    def _fast_path(self, booster: Any) -> DensePredictor | None:
        if self.objective not in FAST_OBJECTIVES or "c" in (booster.feature_types or ()):
            return None
        dense = DensePredictor(booster)
        # Self-check at load: the direct call must agree with inplace_predict exactly,
        # or this model keeps the library's own path.
        probe = np.random.default_rng(0).normal(size=(4, self.n_features)).astype(np.float32)
        probe[0] = 0.0
        probe[1, ::2] = np.nan
        try:
            same = np.array_equal(dense(probe), np.asarray(booster.inplace_predict(probe)).reshape(-1))
        except Exception:
            same = False
        return dense if same else None

    def to_ubj(self) -> bytes:
        """The booster as UBJ bytes, for a heavy predict worker to load its own copy.

        Serialised on a thread of its own: XGBoost keeps `save_raw`'s buffer in a per-thread
        entry freed only when the booster is destroyed on that same thread, so a pool thread
        that outlives the booster (the cache frees it on another) kept every such buffer:
        ~2.6 MB per 3,000-tree model, for good. The buffer dies with this thread."""
        out: list[bytes | BaseException] = []

        def serialise() -> None:
            try:
                out.append(bytes(self.booster.save_raw("ubj")))
            except BaseException as exc:  # re-raised in the caller's thread
                out.append(exc)

        thread = threading.Thread(target=serialise, name="modelcache-to-ubj")
        thread.start()
        thread.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def raw(self, x: np.ndarray) -> np.ndarray:
        """XGBoost's output for `x`: one value per row, or one row of class scores each."""
        if self.dense is not None and x.ndim == 2 and x.shape[1] == self.n_features:
            flat = self.dense(x)
            return flat.reshape(len(x), -1) if len(flat) != len(x) else flat
        return np.asarray(self.booster.inplace_predict(x))

    def predict(self, x: np.ndarray) -> Predictions:
        out = self.raw(x)
        if self.objective == "binary:logistic":
            p1 = out.reshape(-1)
            return Predictions((p1 >= 0.5).astype(np.int64), np.stack([1 - p1, p1], axis=1))
        if self.objective == "multi:softprob":
            probs = out.reshape(len(x), -1)
            return Predictions(probs.argmax(axis=1), probs)
        if self.task != REGRESSION:  # binary:hinge, multi:softmax give class labels
            return Predictions(out.reshape(-1).astype(np.int64))
        return Predictions(out.reshape(-1))


def load(raw: bytes) -> BoosterAdapter:
    """A booster from `.ubj` or `.json` bytes."""
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return BoosterAdapter(booster)
