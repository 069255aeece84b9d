"""Prediction adapters: one interface over XGBoost boosters and sklearn-style estimators.

`deserialize` turns verified artifact bytes into a `LoadedModel`. XGBoost
formats load natively (no pickle); joblib bytes reach this module only after
the loader checked their SHA-256 (invariant 5).
"""

from __future__ import annotations

import ctypes
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import joblib
import numpy as np
import xgboost as xgb

from coordinator.registry import ModelMetadata
from node.errors import InvalidInput, ModelLoadError

Row = Sequence[float | None] | Mapping[str, float | None]


@dataclass(frozen=True)
class Predictions:
    """Per-row outputs as arrays, the one shape every protocol renders from.

    `labels` has one entry per row (class indices as int64 for classifiers, values
    as float32 for regression). `probabilities` is the `[rows, classes]` matrix of
    a classifier (two columns for a binary one), None otherwise.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> Predictions:
        """The outputs of rows `start:stop` (one caller's share of a batched predict)."""
        probs = self.probabilities
        return Predictions(self.labels[start:stop], None if probs is None else probs[start:stop])


class Adapter(Protocol):
    task: str
    n_features: int

    def predict(self, x: np.ndarray) -> Predictions: ...


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
        self.n_features = int(booster.num_features())
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        self.objective = objective
        if objective in ("binary:logistic", "binary:hinge"):
            self.task = "binary_classification"
        elif objective.startswith("multi:"):
            self.task = "multiclass_classification"
        else:
            self.task = "regression"
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
        if self.task != "regression":  # binary:hinge, multi:softmax give class labels
            return Predictions(out.reshape(-1).astype(np.int64))
        return Predictions(out.reshape(-1))


class EstimatorAdapter:
    """Anything with sklearn's `predict` (and `predict_proba` for classifiers)."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        if hasattr(estimator, "get_params") and "n_jobs" in estimator.get_params():
            estimator.set_params(n_jobs=1)
        self.n_features = int(getattr(estimator, "n_features_in_", 0))
        self.classes = getattr(estimator, "classes_", None)
        if hasattr(estimator, "predict_proba") and self.classes is not None:
            n = len(self.classes)
            self.task = "binary_classification" if n == 2 else "multiclass_classification"
        else:
            self.task = "regression"

    def predict(self, x: np.ndarray) -> Predictions:
        labels = np.asarray(self.estimator.predict(x)).reshape(-1)
        if self.task == "regression":
            return Predictions(labels)
        return Predictions(labels, np.asarray(self.estimator.predict_proba(x)))


@dataclass(frozen=True)
class LoadedModel:
    """A deserialized model with the metadata it was published with."""

    meta: ModelMetadata
    adapter: Adapter

    @property
    def n_features(self) -> int:
        return len(self.meta.features) or self.adapter.n_features

    @property
    def task(self) -> str:
        return self.meta.task or self.adapter.task

    def to_matrix(self, rows: Sequence[Row]) -> np.ndarray:
        """Rows as lists (in feature order) or `{name: value}` maps; None is missing."""
        ordered = [self._order(row, i) for i, row in enumerate(rows)]
        x = np.array(ordered, dtype=np.float32)
        if x.ndim != 2:
            raise InvalidInput("features must be numbers or null")
        if np.isinf(x).any():
            raise InvalidInput("features must be finite numbers (use null for missing)")
        return x

    def _order(self, row: Row, index: int) -> Sequence[float | None]:
        where = f" (instance {index})" if index else ""
        expected = self.n_features
        if isinstance(row, Mapping):
            names = self.meta.features
            if not names:
                raise InvalidInput(
                    f"{self.meta.model_type} {self.meta.version} has no feature names in its "
                    f"metadata; send features as a list of {expected} numbers{where}"
                )
            unknown = sorted(set(row) - set(names))
            missing = [n for n in names if n not in row]
            if unknown or missing:
                parts = []
                if unknown:
                    parts.append(f"unknown feature(s) {', '.join(unknown)}")
                if missing:
                    parts.append(f"missing feature(s) {', '.join(missing)} (send null if unknown)")
                raise InvalidInput(f"{'; '.join(parts)}{where}; expected: {', '.join(names)}")
            return [row[n] for n in names]
        if expected and len(row) != expected:
            names = f" ({', '.join(self.meta.features)})" if self.meta.features else ""
            raise InvalidInput(f"expected {expected} features{names}, got {len(row)}{where}")
        return row

    def predict(self, rows: Sequence[Row]) -> Predictions:
        return self.adapter.predict(self.to_matrix(rows))


def deserialize(meta: ModelMetadata, raw: bytes) -> LoadedModel:
    """Build a model from artifact bytes whose checksum has already been verified."""
    try:
        if meta.format in ("xgboost-ubj", "xgboost-json"):
            booster = xgb.Booster()
            booster.load_model(bytearray(raw))
            adapter: Adapter = BoosterAdapter(booster)
        elif meta.format == "joblib":
            obj = joblib.load(io.BytesIO(raw))
            adapter = _adapt_object(obj)
        else:
            raise ValueError(f"unknown format {meta.format!r}")
    except ModelLoadError:
        raise
    except ModuleNotFoundError as exc:
        # A pickled estimator whose library this node lacks: say what to install.
        top = (exc.name or "").partition(".")[0] or "a module"
        hint = "pip install 'modelcache[sklearn]'" if top == "sklearn" else f"install {top}"
        detail = f"{top} is not installed on this node ({hint}; the Docker image has sklearn)"
        raise ModelLoadError(meta.model_type, meta.version, detail, reason="missing_dependency") from exc
    except Exception as exc:
        raise ModelLoadError(meta.model_type, meta.version, f"{type(exc).__name__}: {exc}") from exc
    if meta.features and adapter.n_features and len(meta.features) != adapter.n_features:
        raise ModelLoadError(
            meta.model_type,
            meta.version,
            f"metadata lists {len(meta.features)} features, the model takes {adapter.n_features}",
        )
    return LoadedModel(meta, adapter)


def _adapt_object(obj: Any) -> Adapter:
    if isinstance(obj, xgb.Booster):
        return BoosterAdapter(obj)
    if callable(getattr(obj, "predict", None)):
        return EstimatorAdapter(obj)
    raise TypeError(f"{type(obj).__name__} has no predict() method")
