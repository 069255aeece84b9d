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
    RegistryUnavailable,
    UnsafePath,
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
    (tmp_path / "m.bin").write_bytes(b"x")  # .onnx is a format since the third phase
    with pytest.raises(ArtifactError, match="cannot tell the format"):
        registry.publish(tmp_path / "m.bin", "o", "1.0")


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
    with pytest.raises(MetadataError, match="plain file name") as info:
        registry.metadata("churn", "1.0.0")
    assert str(registry.root) not in str(info.value)


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


# -- filesystems fail (issue 8 section 2) -------------------------------------
def _rewrite_metadata(registry: Registry, changes: dict[str, object]) -> None:
    path = registry.root / "churn" / "1.0.0" / "metadata.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("size_bytes", True, "size_bytes must be a non-negative integer"),
        ("size_bytes", -1, "size_bytes must be a non-negative integer"),
        ("size_bytes", "12", "size_bytes must be a non-negative integer"),
        ("size_bytes", 1.5, "size_bytes must be a non-negative integer"),
        ("features", "f0,f1", "features must be a list of strings"),
        ("features", ["f0", 1], "features must be a list of strings"),
        ("features", ["f0", "f0"], "features must not repeat"),
        ("metrics", {"f1": "high"}, "metrics must map names to finite numbers"),
        ("metrics", {"f1": float("nan")}, "metrics must map names to finite numbers"),
        ("metrics", {"f1": True}, "metrics must map names to finite numbers"),
        ("metrics", [0.9], "metrics must map names to finite numbers"),
        ("task", 3, "task must be a string"),
        ("created_at", 1700000000, "created_at must be a string"),
        ("model_type", 7, "model_type must be a string"),
        ("sha256", None, "sha256 must be a string"),
    ],
)
def test_metadata_fields_are_validated_on_read(
    registry: Registry, publish: PublishFn, field: str, value: object, fragment: str
) -> None:
    publish("churn", "1.0.0")
    _rewrite_metadata(registry, {field: value})
    with pytest.raises(MetadataError, match=fragment) as info:
        registry.metadata("churn", "1.0.0")
    assert str(info.value).startswith("metadata of churn 1.0.0: ")
    assert str(registry.root) not in str(info.value)  # clients see the model, logs see the path


def test_optional_fields_may_be_absent(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    _rewrite_metadata(registry, {"features": _DELETE, "metrics": _DELETE, "task": None})
    meta = registry.metadata("churn", "1.0.0")
    assert (meta.features, meta.metrics, meta.task) == ((), {}, None)


def test_huge_metadata_is_refused_without_reading_it_whole(registry: Registry, publish: PublishFn) -> None:
    """A sparse 8 GiB metadata.json: reading it whole would take seconds and gigabytes."""
    publish("churn", "1.0.0")
    os.truncate(registry.root / "churn" / "1.0.0" / "metadata.json", 8 << 30)
    with pytest.raises(MetadataError, match="larger than 1048576 bytes"):
        registry.metadata("churn", "1.0.0")


def test_metadata_that_is_a_directory_is_a_registry_error(registry: Registry, publish: PublishFn) -> None:
    """Real file state: a directory where metadata.json is expected (open() succeeds, read fails)."""
    publish("churn", "1.0.0")
    path = registry.root / "churn" / "1.0.0" / "metadata.json"
    path.unlink()
    path.mkdir()
    assert registry.versions("churn") == ["1.0.0"]  # listed, so loading it reports why it fails
    with pytest.raises(RegistryUnavailable, match=r"metadata\.json is not a regular file") as info:
        registry.metadata("churn", "1.0.0")
    assert str(registry.root) not in str(info.value) and info.value.path == str(path)


def test_artifact_read_is_capped_at_size_bytes_plus_one(registry: Registry, publish: PublishFn) -> None:
    meta = publish("churn", "1.0.0")
    os.truncate(registry.artifact_path(meta), 8 << 30)  # sparse: cheap to create, costly to read
    assert len(registry.read_artifact(meta)) == meta.size_bytes + 1


def test_symlinked_metadata_and_artifact_are_refused(
    registry: Registry, publish: PublishFn, tmp_path: Path
) -> None:
    meta = publish("churn", "1.0.0")
    folder = registry.root / "churn" / "1.0.0"
    outside = tmp_path / "outside.json"
    outside.write_bytes((folder / "metadata.json").read_bytes())
    (folder / "metadata.json").unlink()
    (folder / "metadata.json").symlink_to(outside)  # resolves outside the root
    assert registry.versions("churn") == ["1.0.0"]
    with pytest.raises(UnsafePath, match=r"metadata\.json is reached through a symlink"):
        registry.metadata("churn", "1.0.0")

    meta2 = publish("churn", "2.0.0")
    artifact = registry.artifact_path(meta2)
    artifact.rename(folder / "elsewhere.ubj")
    artifact.symlink_to("../1.0.0/elsewhere.ubj")  # even a link that stays inside the root
    assert registry.metadata("churn", "2.0.0").sha256 == meta2.sha256
    with pytest.raises(UnsafePath, match=r"model\.ubj is reached through a symlink"):
        registry.read_artifact(meta2)
    assert meta.sha256  # (the first version is still described correctly)


def test_symlinked_directories_are_not_followed(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    (registry.root / "alias").symlink_to(registry.root / "churn")
    (registry.root / "churn" / "9.0.0").symlink_to(registry.root / "churn" / "1.0.0")
    assert registry.model_types() == ["churn"]
    assert registry.versions("churn") == ["1.0.0"]
    with pytest.raises(ModelNotFound):
        registry.versions("alias")
    with pytest.raises(UnsafePath, match="symlink"):
        registry.metadata("churn", "9.0.0")
    with pytest.raises(UnsafePath, match="symlink"):
        registry.metadata("alias", "1.0.0")


def test_listing_goes_on_past_an_unreadable_model_type(
    registry: Registry, publish: PublishFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Monkeypatched: tests run as root, which no permission bits keep from listing a directory."""
    publish("churn", "1.0.0")
    publish("fraud", "1.0.0")
    real_scandir = os.scandir
    denied = registry.root / "fraud"

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert registry.model_types() == ["churn"]
    found = registry.scan()
    assert found["churn"] == ["1.0.0"]
    assert isinstance(found["fraud"], RegistryUnavailable)
    assert str(found["fraud"]) == "registry files of fraud: cannot list its versions (Permission denied)"
    with pytest.raises(RegistryUnavailable, match="Permission denied"):
        registry.versions("fraud")


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_published_versions_are_readable_by_other_users(
    registry: Registry, publish: PublishFn, umask: int, dir_mode: int, file_mode: int
) -> None:
    """mkdtemp makes 0700; a node running as another user must still read the version."""
    old = os.umask(umask)
    try:
        meta = publish("churn", "1.0.0")
    finally:
        os.umask(old)
    folder = registry.root / "churn" / "1.0.0"
    assert folder.stat().st_mode & 0o777 == dir_mode
    for name in ("metadata.json", meta.artifact):
        assert (folder / name).stat().st_mode & 0o777 == file_mode


def test_a_file_where_a_version_directory_should_be_is_no_such_version(
    registry: Registry, publish: PublishFn
) -> None:
    publish("m", "1.0")
    (registry.root / "m" / "1.5").write_text("junk")
    assert registry.versions("m") == ["1.0"]
    with pytest.raises(VersionNotFound, match=r"available versions: 1\.0"):
        registry.metadata("m", "1.5")
