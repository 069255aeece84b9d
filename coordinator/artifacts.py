"""What a model file says about itself (task, feature names), read at publish time.

XGBoost and joblib artifacts are recorded as the publisher describes them
(`--feature`, `--task`). A LightGBM text model carries its objective and feature
names in its header, read here as text (no library needed); an ONNX model
carries its inputs and outputs, read with onnxruntime when it is installed (a
publisher without it records what the flags say; nodes read the model again at
load). The node's runtimes (`node.runtimes.lightgbm`, `node.runtimes.onnx`) use
the same readers, so publish and serve cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.errors import ArtifactError

BINARY, MULTICLASS, REGRESSION = "binary_classification", "multiclass_classification", "regression"
LIGHTGBM_CLASSIFIERS = {"binary": BINARY, "multiclass": MULTICLASS, "multiclassova": MULTICLASS}
# The header ends where the first tree starts; 1 MiB is far more than any header needs.
LIGHTGBM_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Described:
    """An artifact's own account of itself; empty fields when it says nothing."""

    features: tuple[str, ...] = ()
    task: str | None = None
    n_features: int | None = None


@dataclass(frozen=True)
class LightGBMHeader:
    objective: str
    """The objective's name, without its parameters (`binary`, `multiclass`, `regression`, ...)."""
    features: tuple[str, ...]
    n_classes: int

    @property
    def task(self) -> str:
        return LIGHTGBM_CLASSIFIERS.get(self.objective, REGRESSION)


def lightgbm_header(text: str) -> LightGBMHeader:
    """The `key=value` header of a LightGBM text model (`Booster.save_model`)."""
    fields: dict[str, str] = {}
    for line in text[:LIGHTGBM_HEADER_BYTES].splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if "max_feature_idx" not in fields or "objective" not in fields:
        raise ArtifactError("not a LightGBM text model: no max_feature_idx/objective in its header")
    try:
        n_features = int(fields["max_feature_idx"]) + 1
        n_classes = int(fields.get("num_class", "1"))
    except ValueError:
        raise ArtifactError("not a LightGBM text model: max_feature_idx/num_class are not integers") from None
    names = tuple(fields.get("feature_names", "").split())
    if len(names) != n_features:
        names = ()
    return LightGBMHeader(fields["objective"].split()[0], names, n_classes)


@dataclass(frozen=True)
class OnnxSignature:
    """How an ONNX model takes its features and gives its answers."""

    features: tuple[str, ...]
    """One name per input when the model takes one input per column, else empty."""
    n_features: int
    """Columns of the feature matrix; 0 when the model's input shape leaves it open."""
    columns: bool
    """True: one `[N, 1]` input per feature; False: one `[N, F]` input."""
    classifier: bool
    """A label output followed by a probabilities output (skl2onnx's and onnxmltools' layout)."""


def onnx_signature(session: Any) -> OnnxSignature:
    """Read an `onnxruntime.InferenceSession`'s inputs and outputs; refuse what cannot be fed."""
    inputs = session.get_inputs()
    for node in inputs:
        if node.type not in ONNX_INPUT_TYPES:
            raise ArtifactError(
                f"ONNX input {node.name!r} is {node.type}: only float, double and int64 inputs "
                "can be served (encode categories as numbers before export)"
            )
    outputs = session.get_outputs()
    if not outputs:
        raise ArtifactError("the ONNX model has no outputs")
    classifier = len(outputs) >= 2
    if len(inputs) == 1:
        shape = inputs[0].shape
        if len(shape) != 2:
            raise ArtifactError(f"ONNX input {inputs[0].name!r} has shape {shape}; expected [N, features]")
        width = shape[1] if isinstance(shape[1], int) else 0
        return OnnxSignature((), width, False, classifier)
    for node in inputs:
        if len(node.shape) not in (1, 2) or (len(node.shape) == 2 and node.shape[1] != 1):
            raise ArtifactError(
                f"ONNX input {node.name!r} has shape {node.shape}: a model with several inputs "
                "must take one [N, 1] column per input"
            )
    return OnnxSignature(tuple(n.name for n in inputs), len(inputs), True, classifier)


ONNX_INPUT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}


def describe(path: Path, fmt: str) -> Described:
    """What the artifact at `path` (of registry format `fmt`) says about itself."""
    if fmt == "lightgbm-txt":
        with path.open("rb") as fh:
            head = fh.read(LIGHTGBM_HEADER_BYTES).decode("utf-8", errors="replace")
        header = lightgbm_header(head)
        return Described(header.features, header.task, len(header.features) or None)
    if fmt == "onnx":
        return _describe_onnx(path)
    return Described()


def _describe_onnx(path: Path) -> Described:
    try:
        import onnxruntime
    except ImportError:
        return Described()  # the flags stand; the node reads the model when it loads it
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"onnxruntime cannot open {path.name}: {str(exc)[:200]}") from None
    sig = onnx_signature(session)
    task = onnx_task(session, sig) if sig.classifier else REGRESSION
    return Described(sig.features, task, sig.n_features or None)


def onnx_task(session: Any, sig: OnnxSignature) -> str:
    """A classifier's task from its probabilities' width: a static shape, else one probe row."""
    probs = session.get_outputs()[1]
    shape = getattr(probs, "shape", None)
    if probs.type.startswith("tensor") and shape and len(shape) == 2 and isinstance(shape[1], int):
        return BINARY if shape[1] == 2 else MULTICLASS
    if not sig.n_features:
        return MULTICLASS
    import numpy as np

    feeds = {}
    for node in session.get_inputs():
        width = 1 if sig.columns else sig.n_features
        dims = (1, width) if len(node.shape) == 2 else (1,)
        feeds[node.name] = np.zeros(dims, dtype=ONNX_INPUT_TYPES[node.type])
    out = session.run([probs.name], feeds)[0]
    width = len(out[0]) if isinstance(out, list) else int(np.asarray(out).shape[-1])
    return BINARY if width == 2 else MULTICLASS


def describe_artifact(path: Path, features: Sequence[str] = ()) -> Described:
    """`describe` by the file's suffix, checked against the `features` a publisher names.

    A file publish would refuse describes nothing (publish then says why).
    """
    from coordinator.registry import FORMATS

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None or not path.is_file():
        return Described()
    described = describe(path, fmt)
    if features and described.n_features and len(features) != described.n_features:
        raise ArtifactError(
            f"{len(features)} --feature names given, but {path.name} takes {described.n_features} features"
        )
    return described
