"""Shared fixtures: tiny models in a temporary registry, free ports, node processes."""

from __future__ import annotations

import os

# As every node runs (node/__main__.py), before anything imports XGBoost: one OpenMP thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.control import Control
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.registry import ModelMetadata, Registry
from coordinator.state import ClusterState
from tests.helpers import FEATURES, HungReads, NodeProcess, PublishFn, train_booster, wait_http


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests isolate themselves by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def link(redis_server: RedisServer, prefix: str) -> Iterator[Link]:
    """One connection to the session's Redis under this test's prefix."""
    made = Link.from_url(redis_server.url, prefix)
    yield made
    made.close()


@pytest.fixture
def state(link: Link) -> ClusterState:
    return ClusterState(link, origin="test")


@pytest.fixture
def members(link: Link) -> Membership:
    return Membership(link)


@pytest.fixture
def control(state: ClusterState, members: Membership, registry: Registry) -> Control:
    """The operator commands over this test's Redis prefix and registry (as the CLI runs them)."""
    return Control(state, members, registry)


CLUSTER_TOKEN = "cluster-token"


@pytest.fixture
def cluster(
    node_process: Callable[..., NodeProcess], registry: Registry, redis_server: RedisServer, prefix: str
) -> Callable[..., list[NodeProcess]]:
    """cluster(n=3, redis_url=None, **env): n real nodes sharing Redis, started in parallel."""

    def _start(n: int = 3, redis_url: str | None = None, **env: str) -> list[NodeProcess]:
        settings = {
            "MODELCACHE_REDIS_URL": redis_url or redis_server.url,
            "MODELCACHE_REDIS_PREFIX": prefix,
            "MODELCACHE_ADMIN_TOKEN": CLUSTER_TOKEN,
            "MODELCACHE_RECONCILE_INTERVAL_S": "1",
            "MODELCACHE_HEARTBEAT_S": "0.3",
            "MODELCACHE_LOAD_RETRIES": "1",
            **env,
        }
        nodes = [node_process(registry.root, wait=False, **settings) for _ in range(n)]
        for node in nodes:
            wait_http(f"{node.url}/readyz", node.proc)
        return nodes

    return _start


@pytest.fixture
def hung_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungReads]:
    """hung_reads.hang(model_type, version): its artifact reads block until the test ends."""
    hung = HungReads()
    monkeypatch.setattr(Registry, "_read", hung.read)
    yield hung
    hung.release.set()
