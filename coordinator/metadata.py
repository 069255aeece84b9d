"""`metadata.json`: what the registry records about one published version, validated on read."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.errors import InvalidName, MetadataError
from coordinator.versions import normalize_version, validate_model_type

# Registry format -> the artifact's file name in a version directory.
ARTIFACT_NAMES = {
    "xgboost-ubj": "model.ubj",
    "xgboost-json": "model.json",
    "joblib": "model.joblib",
    "lightgbm-txt": "model.txt",  # LightGBM's native text model (Booster.save_model)
    "onnx": "model.onnx",
}
_REQUIRED = ("model_type", "version", "format", "artifact", "sha256", "size_bytes", "created_at")
_STRINGS = ("model_type", "version", "format", "artifact", "sha256", "created_at")


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
    def from_dict(
        cls, data: Mapping[str, Any], model_type: str = "", version: str | None = None
    ) -> ModelMetadata:
        """Validate every field's type (no coercion): a bad file is a clear error, not a 500 later."""

        def bad(reason: str) -> MetadataError:
            return MetadataError(model_type, version, reason)

        if not isinstance(data, Mapping):
            raise bad("expected a JSON object")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise bad(f"missing field(s): {', '.join(missing)}")
        for key in _STRINGS:
            if not isinstance(data[key], str):
                raise bad(f"{key} must be a string")
        if data["format"] not in ARTIFACT_NAMES:
            raise bad(f"unknown format {data['format']!r}")
        artifact = data["artifact"]
        if not artifact or artifact.startswith(".") or any(c in artifact for c in "/\\\0"):
            raise bad(f"artifact {artifact!r} must be a plain file name")
        sha = data["sha256"]
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise bad("sha256 must be 64 lowercase hex digits")
        size = data["size_bytes"]
        # bool is an int subclass; a size of `true` would silently disable the byte budget.
        if type(size) is not int or size < 0:
            raise bad("size_bytes must be a non-negative integer")
        features = data.get("features")
        if features is None:
            features = []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise bad("features must be a list of strings")
        if len(set(features)) != len(features):
            raise bad("features must not repeat a name")
        metrics = data.get("metrics")
        if metrics is None:
            metrics = {}
        if not isinstance(metrics, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in metrics.values()
        ):
            raise bad("metrics must map names to finite numbers")
        task = data.get("task")
        if task is not None and not isinstance(task, str):
            raise bad("task must be a string when present")
        try:
            return cls(
                model_type=validate_model_type(data["model_type"]),
                version=normalize_version(data["version"]),
                format=data["format"],
                artifact=artifact,
                sha256=sha,
                size_bytes=size,
                created_at=data["created_at"],
                features=tuple(features),
                metrics={str(k): float(v) for k, v in metrics.items()},
                task=task,
            )
        except InvalidName as exc:
            raise bad(str(exc)) from None
