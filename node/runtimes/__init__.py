"""Runtimes: one module per model library behind one small interface (`base.Runtime`).

`deserialize` turns verified artifact bytes into a `LoadedModel` through the
runtime that serves the metadata's `format`. A runtime module declares its
`FORMATS`, its V2 `PLATFORM` and a `load(raw) -> Runtime`; it imports its
library inside `load`, so a node without that library serves every other
format and answers a model of this one with a 503 naming the extra to
install. A new runtime is one module plus its line in `RUNTIMES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from coordinator.registry import ModelMetadata
from node.errors import ModelLoadError
from node.runtimes.base import Adapter, LoadedModel, Predictions, Row, Runtime

__all__ = [
    "RUNTIMES",
    "Adapter",
    "LoadedModel",
    "Predictions",
    "Row",
    "Runtime",
    "deserialize",
    "import_libraries",
    "platform",
]

# Registry format -> the module (under node.runtimes) that serves it.
RUNTIMES = {
    "xgboost-ubj": "xgboost",
    "xgboost-json": "xgboost",
    "joblib": "sklearn",
    "lightgbm-txt": "lightgbm",
    "onnx": "onnx",
}
# A library a runtime (or an unpickled estimator) imports -> the extra that installs it.
EXTRAS = {"sklearn": "sklearn", "lightgbm": "lightgbm", "onnxruntime": "onnx"}


def runtime_module(fmt: str) -> ModuleType:
    name = RUNTIMES.get(fmt)
    if name is None:
        raise ValueError(f"unknown format {fmt!r}")
    return importlib.import_module(f"node.runtimes.{name}")


def import_libraries(formats: tuple[str, ...] = ("xgboost-ubj", "joblib")) -> list[str]:
    """Import the runtimes of `formats` (and their libraries) now; return those that imported.

    The node starts without them (XGBoost pulls in scikit-learn and SciPy: ~1 s, half of a
    start) and imports them on a background thread once it is ready; a request that needs
    one before that import ends waits for it on Python's import lock, no longer.
    """
    done = []
    for fmt in formats:
        try:
            runtime_module(fmt)
        except ImportError:
            continue  # that library is not installed: its models answer 503 naming the extra
        done.append(RUNTIMES[fmt])
    return done


def platform(fmt: str) -> str:
    """The V2 metadata's `platform` for a registry format (the library that serves it)."""
    name = RUNTIMES.get(fmt)
    return {"sklearn": "sklearn", "onnx": "onnxruntime"}.get(name or "", name or fmt)


def deserialize(meta: ModelMetadata, raw: bytes) -> LoadedModel:
    """Build a model from artifact bytes whose checksum has already been verified (invariant 5)."""
    try:
        runtime: Runtime = runtime_module(meta.format).load(raw)
    except ModelLoadError:
        raise
    except ModuleNotFoundError as exc:
        # The runtime's library (or a pickled estimator's) is missing here: say what to install.
        top = (exc.name or "").partition(".")[0] or "a module"
        extra = EXTRAS.get(top)
        hint = f"pip install 'modelcache[{extra}]'" if extra else f"install {top}"
        detail = f"{top} is not installed on this node ({hint})"
        raise ModelLoadError(meta.model_type, meta.version, detail, reason="missing_dependency") from exc
    except Exception as exc:
        raise ModelLoadError(meta.model_type, meta.version, f"{type(exc).__name__}: {exc}") from exc
    if meta.features and runtime.n_features and len(meta.features) != runtime.n_features:
        raise ModelLoadError(
            meta.model_type,
            meta.version,
            f"metadata lists {len(meta.features)} features, the model takes {runtime.n_features}",
        )
    return LoadedModel(meta, runtime)
