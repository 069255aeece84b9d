"""Shared fixtures: tiny models in a temporary registry, free ports, node processes."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.registry import ModelMetadata, Registry
from tests.helpers import FEATURES, NodeProcess, PublishFn, train_booster


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def publish(registry: Registry, tmp_path: Path) -> PublishFn:
    """publish(model_type, version, seed=..., fmt='ubj', rounds=...) trains and publishes a tiny model."""

    def _publish(
        model_type: str,
        version: str,
        *,
        seed: int | None = None,
        fmt: str = "ubj",
        rounds: int = 5,
        features: tuple[str, ...] = FEATURES,
        objective: str = "binary:logistic",
    ) -> ModelMetadata:
        seed = seed if seed is not None else zlib.crc32(f"{model_type}/{version}".encode()) % 1000
        booster = train_booster(seed, rounds, len(features), objective)
        path = tmp_path / f"artifact-{model_type}-{version}.{fmt}"
        booster.save_model(path)
        return registry.publish(path, model_type, version, features=features, metrics={"f1": 0.9})

    return _publish


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: node_process(registry_root, **env) starts a node; all are stopped after the test."""
    started: list[NodeProcess] = []

    def _start(registry_root: Path, wait: bool = True, port: int | None = None, **env: str) -> NodeProcess:
        node = NodeProcess(registry_root, env, tmp_path / f"node-{len(started)}.log", port)
        started.append(node)
        return node.start(wait)

    yield _start
    for node in started:
        node.stop()
