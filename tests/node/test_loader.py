from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import pytest

from coordinator.errors import ModelNotFound, VersionNotFound
from coordinator.registry import Registry
from node.errors import ChecksumMismatch, ModelLoadError
from node.loader import Loader
from node.runtime import deserialize
from tests.helpers import PublishFn, corrupt


class Payload:
    """Unpickling this creates a marker file: proof that bytes were deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loads_a_verified_model(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    model = Loader(registry).load("m", "1.0")
    assert model.meta.version == "1.0" and model.n_features == 4


def test_corrupt_artifact_fails_checksum_after_retries(registry: Registry, publish: PublishFn) -> None:
    corrupt(registry, publish("m", "1.0"))
    sleeps: list[float] = []
    loader = Loader(registry, retries=3, backoff_s=0.1, sleep=sleeps.append)
    with pytest.raises(ChecksumMismatch, match="does not match metadata"):
        loader.load("m", "1.0")
    assert sleeps == [0.1, 0.2]  # three attempts, exponential backoff


def test_unknown_model_fails_at_once(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    sleeps: list[float] = []
    loader = Loader(registry, sleep=sleeps.append)
    with pytest.raises(VersionNotFound):
        loader.load("m", "2.0")
    with pytest.raises(ModelNotFound):
        loader.load("other", "1.0")
    assert sleeps == []


def test_transient_failure_is_retried(registry: Registry, publish: PublishFn, monkeypatch) -> None:
    publish("m", "1.0")
    loader = Loader(registry, sleep=lambda s: None)
    real = loader.read_verified
    calls = 0

    def flaky(meta):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ModelLoadError("m", "1.0", "NFS hiccup")
        return real(meta)

    monkeypatch.setattr(loader, "read_verified", flaky)
    assert loader.load("m", "1.0").meta.version == "1.0"
    assert calls == 2


def test_tampered_joblib_is_never_unpickled(registry: Registry, tmp_path: Path) -> None:
    """Invariant 5: bytes that fail the checksum never reach pickle."""
    from sklearn.dummy import DummyClassifier

    joblib.dump(DummyClassifier().fit([[0], [1]], [0, 1]), tmp_path / "ok.joblib")
    meta = registry.publish(tmp_path / "ok.joblib", "j", "1.0")
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(marker))
    registry.artifact_path(meta).write_bytes(evil)

    with pytest.raises(ChecksumMismatch):
        Loader(registry, retries=2, sleep=lambda s: None).load("j", "1.0")
    assert not marker.exists()

    # The payload is live: deserializing it without the check would have run it.
    with pytest.raises(ModelLoadError):
        deserialize(meta, evil)
    assert marker.exists()
