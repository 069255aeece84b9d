"""The ONNX runtime: `.onnx` models through onnxruntime (format `onnx`).

Covers what skl2onnx and onnxmltools export for tabular models: one `[N, F]`
input, or one `[N, 1]` input per column (a pipeline over a data frame); a
regressor's one output, or a classifier's label output followed by its
probabilities (a tensor, or skl2onnx's ZipMap list of `{class: probability}`).
The layout is read by `coordinator.artifacts.onnx_signature`, as at publish.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coordinator.artifacts import ONNX_INPUT_TYPES, onnx_signature, onnx_task
from node.runtimes.base import REGRESSION, Predictions

FORMATS = ("onnx",)
PLATFORM = "onnx"
EXTRA = "onnx"


class OnnxRuntime:
    """An `onnxruntime.InferenceSession` on one thread, fed as its inputs ask."""

    def __init__(self, raw: bytes) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread per call: a serving node runs many calls at once, and idle pool
        # threads spinning after each call burn a core (as XGBoost's OpenMP does).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
        self.signature = onnx_signature(self.session)
        self.n_features = self.signature.n_features
        self.feature_names = self.signature.features
        self.inputs = [
            (n.name, np.dtype(ONNX_INPUT_TYPES[n.type]), len(n.shape)) for n in self.session.get_inputs()
        ]
        self.outputs = [o.name for o in self.session.get_outputs()[:2]]
        self.task = onnx_task(self.session, self.signature) if self.signature.classifier else REGRESSION

    def predict(self, x: np.ndarray) -> Predictions:
        try:
            out = self.session.run(self.outputs, self._feeds(x))
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            # onnxruntime's errors (InvalidArgument for a wrong width when the model's
            # shape leaves it open) are plain Exceptions: as ValueError the request path
            # answers them as the client's input, not as a 500.
            raise ValueError(f"onnxruntime refused the input: {_first_line(exc)}") from None
        if self.task == REGRESSION:
            return Predictions(np.asarray(out[0]).reshape(-1))
        labels = np.asarray(out[0]).reshape(-1)
        if len(out) < 2:
            return Predictions(labels)
        return Predictions(labels, _matrix(out[1]))

    def _feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if not self.signature.columns:
            name, dtype, _ = self.inputs[0]
            return {name: _cast(x, dtype, name)}
        feeds = {}
        for i, (name, dtype, rank) in enumerate(self.inputs):
            column = x[:, i : i + 1] if rank == 2 else x[:, i]
            feeds[name] = _cast(np.ascontiguousarray(column), dtype, name)
        return feeds


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _cast(x: np.ndarray, dtype: np.dtype[Any], name: str) -> np.ndarray:
    if dtype.kind == "i":
        if np.isnan(x).any():
            # ValueError: the request path answers it as the client's input (422/400), not a 500.
            raise ValueError(f"input {name!r} is int64 and cannot take a missing value (null)")
        if (x != np.round(x)).any():
            raise ValueError(f"input {name!r} is int64: send whole numbers")
    return x.astype(dtype, copy=False)


def _matrix(probs: Any) -> np.ndarray:
    """Probabilities as `[rows, classes]`: a tensor as is, a ZipMap's dicts in their class order."""
    if isinstance(probs, list):
        if not probs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.array([list(row.values()) for row in probs], dtype=np.float32)
    return np.asarray(probs)


def load(raw: bytes) -> OnnxRuntime:
    """A session from the bytes of an ONNX model."""
    return OnnxRuntime(raw)
