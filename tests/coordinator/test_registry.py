from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coordinator.errors import (
    AlreadyPublished,
    ArtifactError,
    InvalidName,
    MetadataError,
    ModelNotFound,
    VersionNotFound,
)
from coordinator.registry import Registry, sha256_file
from tests.helpers import FEATURES, PublishFn, train_booster


def test_publish_writes_layout_and_metadata(registry: Registry, publish: PublishFn) -> None:
    meta = publish("churn", "1.0.0")
    folder = registry.root / "churn" / "1.0.0"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.ubj"]
    data = json.loads((folder / "metadata.json").read_text())
    assert data["sha256"] == sha256_file(folder / "model.ubj") == meta.sha256
    assert data["size_bytes"] == (folder / "model.ubj").stat().st_size
    assert data["format"] == "xgboost-ubj"
    assert data["features"] == list(FEATURES)
    assert data["metrics"] == {"f1": 0.9}
    assert data["created_at"].endswith("Z")


@pytest.mark.parametrize(("suffix", "fmt"), [("ubj", "xgboost-ubj"), ("json", "xgboost-json")])
def test_format_is_detected(publish: PublishFn, suffix: str, fmt: str) -> None:
    assert publish("m", "1.0.0", fmt=suffix).format == fmt


def test_joblib_format_and_unknown_suffix(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "m.joblib").write_bytes(b"not unpickled at publish time")
    assert registry.publish(tmp_path / "m.joblib", "j", "1.0").format == "joblib"
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="cannot tell the format"):
        registry.publish(tmp_path / "m.onnx", "o", "1.0")


def test_republish_is_refused_unless_forced(registry: Registry, publish: PublishFn) -> None:
    first = publish("churn", "1.0.0", seed=1)
    with pytest.raises(AlreadyPublished, match="--force"):
        publish("churn", "1.0.0", seed=2)
    assert registry.metadata("churn", "1.0.0").sha256 == first.sha256
    booster = train_booster(seed=3, rounds=7)
    path = registry.root.parent / "new.ubj"
    booster.save_model(path)
    replaced = registry.publish(path, "churn", "1.0.0", force=True)
    assert replaced.sha256 != first.sha256
    assert registry.metadata("churn", "1.0.0").sha256 == replaced.sha256
    assert [p.name for p in (registry.root / "churn").iterdir()] == ["1.0.0"]


def test_versions_latest_and_prerelease(registry: Registry, publish: PublishFn) -> None:
    for v in ("1.9.0", "1.10.0", "2.0.0-beta"):
        publish("churn", v)
    assert registry.versions("churn") == ["1.9.0", "1.10.0", "2.0.0b0"]
    assert registry.latest("churn") == "1.10.0"
    assert registry.metadata("churn", "2.0.0-beta").version == "2.0.0b0"
    assert registry.model_types() == ["churn"]


def test_only_prereleases_has_no_latest(registry: Registry, publish: PublishFn) -> None:
    publish("beta-only", "1.0.0rc1")
    with pytest.raises(VersionNotFound, match="latest"):
        registry.latest("beta-only")


def test_unknown_model_and_version_errors_name_the_alternatives(
    registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    with pytest.raises(ModelNotFound, match="known model types: churn"):
        registry.versions("fraud")
    with pytest.raises(VersionNotFound, match=r"available versions: 1\.0\.0"):
        registry.metadata("churn", "9.9.9")
    with pytest.raises(InvalidName):
        registry.metadata("../churn", "1.0.0")


def test_metadata_is_read_without_touching_the_artifact(registry: Registry, publish: PublishFn) -> None:
    meta = publish("churn", "1.0.0")
    registry.artifact_path(meta).unlink()
    assert registry.metadata("churn", "1.0.0").sha256 == meta.sha256


def test_missing_and_malformed_metadata(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    path = registry.root / "churn" / "1.0.0" / "metadata.json"
    path.write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        registry.metadata("churn", "1.0.0")
    path.write_text(json.dumps({"model_type": "churn"}))
    with pytest.raises(MetadataError, match="missing field"):
        registry.metadata("churn", "1.0.0")
    path.write_text(
        json.dumps(
            {
                "model_type": "churn",
                "version": "1.0.0",
                "format": "xgboost-ubj",
                "artifact": "../../x",
                "sha256": "0" * 64,
                "size_bytes": 1,
                "created_at": "now",
            }
        )
    )
    with pytest.raises(MetadataError, match="plain file name"):
        registry.metadata("churn", "1.0.0")


def test_publishing_is_atomic_when_interrupted(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that fails midway leaves no version and no temporary directory behind."""
    booster = train_booster()
    path = tmp_path / "m.ubj"
    booster.save_model(path)
    real_rename = os.rename

    def failing_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        registry.publish(path, "churn", "1.0.0")
    monkeypatch.setattr(os, "rename", real_rename)
    assert list((registry.root / "churn").iterdir()) == []
    with pytest.raises(ModelNotFound):
        registry.versions("churn")


def test_half_written_version_is_invisible(registry: Registry, publish: PublishFn) -> None:
    """A directory without metadata.json (or a hidden temp dir) is not a version."""
    publish("churn", "1.0.0")
    (registry.root / "churn" / "2.0.0").mkdir()
    (registry.root / "churn" / "2.0.0" / "model.ubj").write_bytes(b"partial")
    (registry.root / "churn" / ".publish-abc").mkdir()
    assert registry.versions("churn") == ["1.0.0"]
    assert registry.latest("churn") == "1.0.0"
