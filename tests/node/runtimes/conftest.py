"""Fixtures for the runtime tests: publish a model file, load it as a node would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.artifacts import describe_artifact
from coordinator.registry import Registry
from node.runtimes import LoadedModel, deserialize

LoadFn = Callable[..., LoadedModel]


@pytest.fixture
def load_published(registry: Registry) -> LoadFn:
    """Publish `path` as the CLI does (its self-description recorded) and deserialize it."""

    def _load(path: Path, model_type: str = "m", version: str = "1.0", **options: object) -> LoadedModel:
        described = describe_artifact(path)
        options.setdefault("features", described.features)
        options.setdefault("task", described.task)
        meta = registry.publish(path, model_type, version, **options)  # type: ignore[arg-type]
        return deserialize(meta, registry.artifact_path(meta).read_bytes())

    return _load
