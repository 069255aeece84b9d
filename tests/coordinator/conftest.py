"""Fixtures for the object-store registry: one real S3-compatible server per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.registry import ObjectStoreRegistry, StoreLocation
from coordinator.registry.disk_tier import DiskTier
from coordinator.registry.store import Timeouts
from testkit.s3_server import BUCKET, S3Server, create_bucket

StoreRegistryFn = Callable[..., ObjectStoreRegistry]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An empty bucket `models` and the AWS variables that reach it, set in this process."""
    s3_server.reset()
    create_bucket(s3_server.url)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def store_registry(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StoreRegistryFn:
    """Factory: store_registry(endpoint=None, tier_bytes=None, **options) -> a registry on s3://models/reg."""

    def _open(
        endpoint: str | None = None, tier_bytes: int | None = None, prefix: str = "reg", **options: Any
    ) -> ObjectStoreRegistry:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint or s3_env["AWS_ENDPOINT_URL"])
        tier = DiskTier(tmp_path / "tier", tier_bytes) if tier_bytes else None
        options.setdefault("timeouts", Timeouts(connect_s=1.0, read_s=2.0))
        return ObjectStoreRegistry(StoreLocation.parse(f"s3://{BUCKET}/{prefix}"), disk_tier=tier, **options)

    return _open
