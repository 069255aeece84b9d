"""The inference node: model cache, loader, prediction adapters, HTTP API, metrics."""

from node.cache import LRU, ModelCache
from node.loader import Loader
from node.metrics import NodeMetrics
from node.runtime import LoadedModel, deserialize
from node.service import ModelService, Outcome, Resolved
from node.settings import NodeSettings

__all__ = [
    "LRU",
    "LoadedModel",
    "Loader",
    "ModelCache",
    "ModelService",
    "NodeMetrics",
    "NodeSettings",
    "Outcome",
    "Resolved",
    "deserialize",
]
