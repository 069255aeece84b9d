"""The model registry: a directory tree of immutable, checksummed model versions.

    <root>/<model_type>/<version>/metadata.json
    <root>/<model_type>/<version>/model.ubj | model.json | model.joblib

Publishing writes into a hidden temporary directory beside the target and
renames it into place, so a version appears whole or not at all (invariant 6).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.errors import (
    AlreadyPublished,
    ArtifactError,
    InvalidName,
    MetadataError,
    ModelNotFound,
    VersionNotFound,
)
from coordinator.versions import (
    latest_stable,
    normalize_version,
    parse_version,
    sort_versions,
    validate_model_type,
)

FORMATS = {".ubj": "xgboost-ubj", ".json": "xgboost-json", ".joblib": "joblib", ".pkl": "joblib"}
ARTIFACT_NAMES = {"xgboost-ubj": "model.ubj", "xgboost-json": "model.json", "joblib": "model.joblib"}
METADATA_FILE = "metadata.json"
_REQUIRED = ("model_type", "version", "format", "artifact", "sha256", "size_bytes", "created_at")


@dataclass(frozen=True)
class ModelMetadata:
    """What `metadata.json` says about one published version."""

    model_type: str
    version: str
    format: str
    artifact: str
    sha256: str
    size_bytes: int
    created_at: str
    features: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        if self.task is None:
            del data["task"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "metadata") -> ModelMetadata:
        if not isinstance(data, Mapping):
            raise MetadataError(source, "expected a JSON object")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise MetadataError(source, f"missing field(s): {', '.join(missing)}")
        if data["format"] not in ARTIFACT_NAMES:
            raise MetadataError(source, f"unknown format {data['format']!r}")
        artifact = str(data["artifact"])
        if "/" in artifact or "\\" in artifact or artifact.startswith("."):
            raise MetadataError(source, f"artifact {artifact!r} must be a plain file name")
        sha = str(data["sha256"])
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise MetadataError(source, "sha256 must be 64 lowercase hex digits")
        try:
            return cls(
                model_type=validate_model_type(str(data["model_type"])),
                version=normalize_version(str(data["version"])),
                format=str(data["format"]),
                artifact=artifact,
                sha256=sha,
                size_bytes=int(data["size_bytes"]),
                created_at=str(data["created_at"]),
                features=tuple(str(f) for f in data.get("features") or ()),
                metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                task=data.get("task"),
            )
        except (TypeError, ValueError) as exc:
            raise MetadataError(source, f"malformed field: {exc}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtifactError(
            f"cannot tell the format of {path.name}: expected .ubj or .json (XGBoost) "
            "or .joblib/.pkl (joblib)"
        )
    return fmt


class Registry:
    """Read and publish models under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- reading -----------------------------------------------------------
    def model_types(self) -> list[str]:
        """Every model type with at least one published version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self._version_dirs(p)
        )

    def versions(self, model_type: str) -> list[str]:
        """Published versions of `model_type`, ascending by PEP 440."""
        model_dir = self.root / validate_model_type(model_type)
        found = self._version_dirs(model_dir) if model_dir.is_dir() else []
        if not found:
            raise ModelNotFound(model_type, self.model_types())
        return sort_versions(found)

    def latest(self, model_type: str) -> str:
        """The highest stable version; pre-releases only ever by explicit request."""
        versions = self.versions(model_type)
        latest = latest_stable(versions)
        if latest is None:
            raise VersionNotFound(model_type, "latest (stable)", versions)
        return latest

    def metadata(self, model_type: str, version: str) -> ModelMetadata:
        """Read `metadata.json` only; the artifact is not touched."""
        version = normalize_version(version)
        path = self.root / validate_model_type(model_type) / version / METADATA_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            known = self._version_dirs(path.parent.parent) if path.parent.parent.is_dir() else []
            if not known:
                raise ModelNotFound(model_type, self.model_types()) from None
            if path.parent.is_dir():
                raise MetadataError(str(path), "file is missing") from None
            raise VersionNotFound(model_type, version, sort_versions(known)) from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MetadataError(str(path), f"not valid JSON ({exc})") from None
        meta = ModelMetadata.from_dict(data, str(path))
        if (meta.model_type, meta.version) != (model_type, version):
            raise MetadataError(
                str(path), f"describes {meta.model_type} {meta.version}, not {model_type} {version}"
            )
        return meta

    def artifact_path(self, meta: ModelMetadata) -> Path:
        return self.root / meta.model_type / meta.version / meta.artifact

    def _version_dirs(self, model_dir: Path) -> list[str]:
        out = []
        for p in model_dir.iterdir():
            if p.name.startswith(".") or not (p / METADATA_FILE).is_file():
                continue
            try:
                out.append(normalize_version(p.name))
            except InvalidName:
                continue
        return out

    # -- publishing --------------------------------------------------------
    def publish(
        self,
        artifact: str | os.PathLike[str],
        model_type: str,
        version: str,
        *,
        features: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None,
        task: str | None = None,
        force: bool = False,
    ) -> ModelMetadata:
        """Copy `artifact` into the registry with its checksum, atomically."""
        src = Path(artifact)
        if not src.is_file():
            raise ArtifactError(f"artifact {src} does not exist or is not a file")
        validate_model_type(model_type)
        parse_version(version)
        version = normalize_version(version)
        fmt = detect_format(src)
        final = self.root / model_type / version
        if final.exists() and not force:
            raise AlreadyPublished(model_type, version)

        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=final.parent))
        try:
            dest = tmp / ARTIFACT_NAMES[fmt]
            shutil.copyfile(src, dest)
            meta = ModelMetadata(
                model_type=model_type,
                version=version,
                format=fmt,
                artifact=dest.name,
                sha256=sha256_file(dest),
                size_bytes=dest.stat().st_size,
                created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                features=tuple(features),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                task=task,
            )
            (tmp / METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
            _fsync_dir(tmp)
            self._swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    @staticmethod
    def _swap_into_place(tmp: Path, final: Path) -> None:
        # rename() cannot replace a non-empty directory, so a forced republish
        # moves the old version aside first and removes it afterwards.
        old = None
        if final.exists():
            old = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
