from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import joblib
import pytest

from coordinator.errors import ModelNotFound, VersionNotFound
from coordinator.registry import Registry
from node.errors import ChecksumMismatch, ModelLoadError
from node.loader import Loader, LoadPool
from node.runtime import deserialize
from tests.helpers import PublishFn, corrupt, eventually


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


def _edit_metadata(registry: Registry, model_type: str, version: str, **changes: object) -> None:
    path = registry.root / model_type / version / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_artifact_larger_than_size_bytes_is_refused_unread(registry: Registry, publish: PublishFn) -> None:
    """A sparse 8 GiB artifact: the loader reads size_bytes + 1 bytes, not gigabytes."""
    meta = publish("m", "1.0")
    os.truncate(registry.artifact_path(meta), 8 << 30)
    sleeps: list[float] = []
    with pytest.raises(ModelLoadError, match="larger than its recorded size_bytes") as info:
        Loader(registry, retries=2, sleep=sleeps.append).load("m", "1.0")
    assert info.value.reason == "size"


def test_size_bytes_zero_with_a_real_artifact_is_refused(registry: Registry, publish: PublishFn) -> None:
    """size_bytes 0 would make the cache's byte budget count the model as free."""
    publish("m", "1.0")
    _edit_metadata(registry, "m", "1.0", size_bytes=0)
    with pytest.raises(ModelLoadError, match=r"larger than its recorded size_bytes \(0\)"):
        Loader(registry, retries=1).load("m", "1.0")


def test_bad_metadata_is_a_load_error_with_a_reason_and_no_retry(
    registry: Registry, publish: PublishFn
) -> None:
    publish("m", "1.0")
    _edit_metadata(registry, "m", "1.0", size_bytes=True)
    sleeps: list[float] = []
    with pytest.raises(ModelLoadError, match="size_bytes must be a non-negative integer") as info:
        Loader(registry, retries=3, sleep=sleeps.append).load("m", "1.0")
    assert info.value.reason == "metadata" and sleeps == []
    assert str(registry.root) not in str(info.value)


def test_unreadable_artifact_is_retried_then_fails_without_a_path(
    registry: Registry, publish: PublishFn
) -> None:
    """A directory where the artifact is expected: an OSError on read, as from a failing disk."""
    meta = publish("m", "1.0")
    path = registry.artifact_path(meta)
    path.unlink()
    path.mkdir()
    sleeps: list[float] = []
    with pytest.raises(ModelLoadError, match=r"model\.ubj is not a regular file") as info:
        Loader(registry, retries=3, backoff_s=0.1, sleep=sleeps.append).load("m", "1.0")
    assert info.value.reason == "io" and sleeps == [0.1, 0.2]
    assert str(registry.root) not in str(info.value)


def test_load_pool_runs_at_most_its_workers_and_reports_them() -> None:
    pool = LoadPool(2)
    release = threading.Event()
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        release.wait(5)
        return i

    futures = [pool.submit(lambda i=i: job(i), f"m {i}") for i in range(5)]
    assert eventually(lambda: len(pool.in_progress()) == 2)
    assert len(started) == 2 and pool.queued == 3
    assert {label for label, _ in pool.in_progress()} <= {f"m {i}" for i in range(5)}
    with pytest.raises(TimeoutError):
        pool.run(lambda: 1, 0.05)
    release.set()
    assert sorted(f.result(5) for f in futures) == [0, 1, 2, 3, 4]
    assert eventually(lambda: pool.in_progress() == [])
