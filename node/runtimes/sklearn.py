"""The scikit-learn runtime: joblib-saved estimators (anything with sklearn's `predict`).

joblib bytes reach this module only after the loader checked their SHA-256
(invariant 5): unpickling runs code. A joblib file holding an `xgboost.Booster`
is served by the XGBoost runtime.
"""

from __future__ import annotations

import io
from typing import Any

import joblib
import numpy as np

from node.runtimes.base import REGRESSION, Predictions, Runtime, task_for_classes

FORMATS = ("joblib",)
PLATFORM = "sklearn"


class EstimatorAdapter:
    """Anything with sklearn's `predict` (and `predict_proba` for classifiers)."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        if hasattr(estimator, "get_params") and "n_jobs" in estimator.get_params():
            estimator.set_params(n_jobs=1)
        self.n_features = int(getattr(estimator, "n_features_in_", 0))
        self.classes = getattr(estimator, "classes_", None)
        if hasattr(estimator, "predict_proba") and self.classes is not None:
            self.task = task_for_classes(len(self.classes))
        else:
            self.task = REGRESSION

    def predict(self, x: np.ndarray) -> Predictions:
        labels = np.asarray(self.estimator.predict(x)).reshape(-1)
        if self.task == REGRESSION:
            return Predictions(labels)
        return Predictions(labels, np.asarray(self.estimator.predict_proba(x)))


def load(raw: bytes) -> Runtime:
    """An estimator (or a pickled XGBoost booster) from verified joblib bytes."""
    return adapt(joblib.load(io.BytesIO(raw)))


def adapt(obj: Any) -> Runtime:
    import xgboost as xgb

    from node.runtimes.xgboost import BoosterAdapter

    if isinstance(obj, xgb.Booster):
        return BoosterAdapter(obj)
    if callable(getattr(obj, "predict", None)):
        return EstimatorAdapter(obj)
    raise TypeError(f"{type(obj).__name__} has no predict() method")
