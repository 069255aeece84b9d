"""What every runtime shares: the prediction result, the runtime interface, a loaded model.

A runtime turns verified artifact bytes into a `Runtime` (an object with `task`,
`n_features` and `predict(x) -> Predictions`); `LoadedModel` puts the metadata
beside it and turns request rows into the float32 matrix every runtime takes.
Every protocol (v1, KServe V1, V2, gRPC) renders the one `Predictions` shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from coordinator.registry import ModelMetadata
from node.errors import InvalidInput

Row = Sequence[float | None] | Mapping[str, float | None]

BINARY, MULTICLASS, REGRESSION = "binary_classification", "multiclass_classification", "regression"


@dataclass(frozen=True)
class Predictions:
    """Per-row outputs as arrays, the one shape every protocol renders from.

    `labels` has one entry per row: for a classifier the predicted class (an int64
    index, or the estimator's own class value where it has labels, e.g. a
    scikit-learn or ONNX classifier), for a regressor the value (floating point, at
    the precision the library computed it). `probabilities` is the `[rows,
    classes]` matrix of a classifier (two columns for a binary one), None otherwise.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> Predictions:
        """The outputs of rows `start:stop` (one caller's share of a batched predict)."""
        probs = self.probabilities
        return Predictions(self.labels[start:stop], None if probs is None else probs[start:stop])


class Runtime(Protocol):
    """One loaded model of one library: what `LoadedModel` predicts through."""

    task: str
    """`binary_classification`, `multiclass_classification` or `regression`."""
    n_features: int
    """Columns of the matrix `predict` takes; 0 when the model does not say."""

    def predict(self, x: np.ndarray) -> Predictions:
        """Outputs for a float32 matrix `[rows, n_features]` (NaN is missing)."""
        ...


# The name the rest of the node has used for a runtime since the first phase.
Adapter = Runtime


def from_probabilities(probs: np.ndarray) -> Predictions:
    """A classifier's outputs from its `[rows, classes]` probabilities (labels are class indices)."""
    return Predictions(probs.argmax(axis=1).astype(np.int64), probs)


def task_for_classes(n_classes: int) -> str:
    return BINARY if n_classes == 2 else MULTICLASS


@dataclass(frozen=True)
class LoadedModel:
    """A deserialized model with the metadata it was published with."""

    meta: ModelMetadata
    adapter: Runtime

    @property
    def n_features(self) -> int:
        return len(self.meta.features) or self.adapter.n_features

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The metadata's feature names, else those the model file carries (LightGBM, ONNX columns)."""
        return self.meta.features or tuple(getattr(self.adapter, "feature_names", ()))

    @property
    def task(self) -> str:
        return self.meta.task or self.adapter.task

    def to_matrix(self, rows: Sequence[Row]) -> np.ndarray:
        """Rows as lists (in feature order) or `{name: value}` maps; None is missing."""
        x = self._lists_at_once(rows)
        if x is None:
            ordered = [self._order(row, i) for i, row in enumerate(rows)]
            x = np.array(ordered, dtype=np.float32)
        if x.ndim != 2:
            raise InvalidInput("features must be numbers or null")
        if np.isinf(x).any():
            raise InvalidInput("features must be finite numbers (use null for missing)")
        return x

    def _lists_at_once(self, rows: Sequence[Row]) -> np.ndarray | None:
        """Rows that are all lists of the right length, converted in one numpy call; else None.

        The same conversion `_order` leads to, without a Python call per row: a 1,000-row batch
        costs the event loop ~0.2 ms instead of ~1 ms, time a single-row request queued behind
        it would wait (benchmarks/bench_isolation.py). Anything else (maps, ragged or wrong-
        length rows) takes the row-by-row path, which names the offending row.
        """
        if not rows or not all(type(row) is list for row in rows):
            return None
        try:
            x = np.array(rows, dtype=np.float32)
        except (ValueError, TypeError):
            return None
        expected = self.n_features
        if x.ndim != 2 or (expected and x.shape[1] != expected):
            return None
        return x

    def _order(self, row: Row, index: int) -> Sequence[float | None]:
        where = f" (instance {index})" if index else ""
        expected = self.n_features
        if isinstance(row, Mapping):
            names = self.feature_names
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
