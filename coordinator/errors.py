"""Errors raised by the control plane.

    ModelCacheError
    ├── InvalidName              a model type or version that fails validation
    ├── ModelNotFound            no such model type in the registry
    │   └── VersionNotFound      the model type exists, that version does not
    ├── MetadataError            metadata.json missing, unreadable or malformed
    ├── AlreadyPublished         publishing over an existing version without force
    ├── ArtifactError            an artifact that cannot be published (unknown format, missing)
    └── ClusterUnavailable       Redis cannot be reached for a cluster-wide call

No HTTP status codes here: the node's API maps these in one place.
"""

from __future__ import annotations


class ModelCacheError(Exception):
    """Base of every error modelcache raises on purpose."""

    code = "modelcache_error"


class InvalidName(ModelCacheError):
    code = "invalid_name"

    def __init__(self, kind: str, value: str, reason: str) -> None:
        self.kind, self.value, self.reason = kind, value, reason
        super().__init__(f"invalid {kind} {value!r}: {reason}")


class ModelNotFound(ModelCacheError):
    code = "model_not_found"

    def __init__(self, model_type: str, known: list[str] | None = None) -> None:
        self.model_type = model_type
        hint = f"; known model types: {', '.join(known)}" if known else ""
        super().__init__(f"unknown model type {model_type!r}{hint}")


class VersionNotFound(ModelNotFound):
    code = "version_not_found"

    def __init__(self, model_type: str, version: str, known: list[str] | None = None) -> None:
        self.model_type, self.version = model_type, version
        hint = f"; available versions: {', '.join(known)}" if known else ""
        ModelCacheError.__init__(self, f"model type {model_type!r} has no version {version!r}{hint}")


class MetadataError(ModelCacheError):
    code = "bad_metadata"

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"metadata {path}: {reason}")


class AlreadyPublished(ModelCacheError):
    code = "already_published"

    def __init__(self, model_type: str, version: str) -> None:
        self.model_type, self.version = model_type, version
        super().__init__(
            f"{model_type} {version} is already published; pass --force (force=True) to replace it"
        )


class ArtifactError(ModelCacheError):
    code = "bad_artifact"


class ClusterUnavailable(ModelCacheError):
    code = "cluster_unavailable"
