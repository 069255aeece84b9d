"""The LightGBM runtime: native text models (`Booster.save_model`, format `lightgbm-txt`).

Text loads without pickle. The task comes from the model's own objective
(`coordinator.artifacts.lightgbm_header`, the reader publish uses too): binary
and multiclass objectives give class probabilities, everything else values.
"""

from __future__ import annotations

import numpy as np

from coordinator.artifacts import lightgbm_header
from node.runtimes.base import BINARY, MULTICLASS, Predictions, from_probabilities

FORMATS = ("lightgbm-txt",)
PLATFORM = "lightgbm"
EXTRA = "lightgbm"


class LightGBMRuntime:
    """A `lightgbm.Booster`, predicted on one thread (the default spins one per core per call)."""

    def __init__(self, text: str) -> None:
        import lightgbm

        header = lightgbm_header(text)
        # Named `model`, not `booster`: node.memory treats a `booster` attribute as XGBoost's.
        self.model = lightgbm.Booster(model_str=text)
        self.n_features = int(self.model.num_feature())
        self.feature_names = header.features
        self.task = header.task
        self.objective = header.objective

    def predict(self, x: np.ndarray) -> Predictions:
        out = np.asarray(self.model.predict(x, num_threads=1))
        if self.task == BINARY:
            p1 = out.reshape(-1)
            return Predictions((p1 >= 0.5).astype(np.int64), np.stack([1 - p1, p1], axis=1))
        if self.task == MULTICLASS:
            return from_probabilities(out.reshape(len(x), -1))
        return Predictions(out.reshape(-1))


def load(raw: bytes) -> LightGBMRuntime:
    """A booster from the bytes of a LightGBM text model."""
    return LightGBMRuntime(raw.decode("utf-8"))
