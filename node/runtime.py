"""Kept for imports written before `node.runtimes` (one module per library) existed."""

from __future__ import annotations

from node.runtimes import LoadedModel, Predictions, Row, deserialize
from node.runtimes.base import Adapter, Runtime
from node.runtimes.sklearn import EstimatorAdapter
from node.runtimes.xgboost import FAST_OBJECTIVES, BoosterAdapter, DensePredictor

__all__ = [
    "FAST_OBJECTIVES",
    "Adapter",
    "BoosterAdapter",
    "DensePredictor",
    "EstimatorAdapter",
    "LoadedModel",
    "Predictions",
    "Row",
    "Runtime",
    "deserialize",
]
