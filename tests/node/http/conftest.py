"""The in-process client (FastAPI's test client) over a node with three published models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn
from tests.node.http.support import TOKEN


@pytest.fixture
def client(registry: Registry, publish: PublishFn) -> Iterator[TestClient]:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    publish("fraud", "1.0.0")
    settings = NodeSettings(
        registry=registry.root,
        admin_token=TOKEN,
        max_body_bytes=4096,
        max_batch=5,
        node_id="n1",
        load_retries=1,
    )
    with TestClient(build_app(settings)) as c:
        yield c
