"""node.heap: the start-up heap leaves the collector's passes; garbage is collected, not frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import node.http.app as node_http_app
from coordinator.registry import Registry
from node.app import build_app, build_node
from node.heap import freeze_startup_heap
from node.http.app import create_app
from node.metrics import NodeMetrics
from node.settings import NodeSettings
from tests.helpers import eventually


class Node:
    """A container the collector tracks."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process is not a node: give its objects back to the collector


def test_freezing_collects_garbage_first_and_exempts_the_survivors(unfrozen: None) -> None:
    alive, garbage = Node(), Node()
    gone = weakref.ref(garbage)
    del garbage  # a cycle: only the collector frees it
    assert freeze_startup_heap() == gc.get_freeze_count() > 0
    assert gone() is None  # collected, not frozen
    assert alive.me is alive
    gc.collect()
    assert gc.get_freeze_count() > 0  # a full pass does not walk them any more


def test_a_node_process_app_freezes_once_warm_and_a_test_app_does_not(
    registry: Registry, unfrozen: None
) -> None:
    settings = NodeSettings(registry=registry.root, grpc_port=0)
    with TestClient(build_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() == 0
    with TestClient(build_app(settings, freeze_heap=True)) as client:
        assert client.get("/readyz").status_code == 200
        assert eventually(lambda: gc.get_freeze_count() > 0, timeout=30)


def test_the_heap_is_frozen_after_the_model_libraries_are_imported(
    registry: Registry, unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # XGBoost, scikit-learn and SciPy are imported after ready (a fast start) and bring ~100k
    # objects: frozen before them, every full pass would still walk them.
    steps: list[str] = []

    def import_libraries() -> list[str]:
        steps.append("libraries imported")
        return ["xgboost"]

    def frozen() -> int:
        steps.append("heap frozen")
        return 1

    monkeypatch.setattr(node_http_app, "import_libraries", import_libraries)
    settings = NodeSettings(registry=registry.root, grpc_port=0)
    with TestClient(
        create_app(settings, build_node(settings, NodeMetrics(None)), after_start=frozen)
    ) as client:
        assert client.get("/readyz").status_code == 200
        assert eventually(lambda: len(steps) == 2, timeout=30)
    assert steps == ["libraries imported", "heap frozen"]
