"""The inference node: model cache, loader, prediction adapters, HTTP API, metrics.

Nothing heavy is imported here: `python -m node` must set `OMP_NUM_THREADS` before
XGBoost loads its OpenMP runtime, and `import node` runs first. The public names
are resolved on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.cache import ModelCache
    from node.loader import Loader
    from node.loads import Loads
    from node.metrics import NodeMetrics
    from node.reloads import Applied, Reloads
    from node.runtime import LoadedModel, deserialize
    from node.service import ModelService, Resolved
    from node.settings import NodeSettings

_EXPORTS = {
    "Applied": "node.reloads",
    "LoadedModel": "node.runtime",
    "Loader": "node.loader",
    "Loads": "node.loads",
    "ModelCache": "node.cache",
    "ModelService": "node.service",
    "NodeMetrics": "node.metrics",
    "NodeSettings": "node.settings",
    "Reloads": "node.reloads",
    "Resolved": "node.service",
    "deserialize": "node.runtime",
}

__all__ = [
    "Applied",
    "LoadedModel",
    "Loader",
    "Loads",
    "ModelCache",
    "ModelService",
    "NodeMetrics",
    "NodeSettings",
    "Reloads",
    "Resolved",
    "deserialize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'node' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
