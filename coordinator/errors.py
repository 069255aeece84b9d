"""Errors raised by the control plane.

    ModelCacheError
    ├── InvalidName              a model type or version that fails validation
    ├── ModelNotFound            no such model type in the registry
    │   └── VersionNotFound      the model type exists, that version does not
    ├── RegistryError            one model's files could not be read (the rest of the registry may be fine)
    │   ├── MetadataError        metadata.json missing, oversized or malformed
    │   ├── RegistryUnavailable  an OSError (permission, I/O, not a regular file) reading the registry
    │   └── UnsafePath           a symlink inside the registry (never followed)
    ├── AlreadyPublished         publishing over an existing version without force
    ├── ArtifactError            an artifact that cannot be published (unknown format, missing)
    ├── ClusterUnavailable       Redis cannot be reached for a cluster-wide call
    │   └── ClusterRefusing      Redis answers but refuses (out of memory, read-only, ...)
    └── ClusterStateCorrupt      Redis answers, but a state key holds the wrong type of value

No HTTP status codes here: the node's API maps these in one place.
Messages name the model and version, never a filesystem path: `str(exc)` reaches
clients, so the path is kept in the `path` attribute for log lines only.
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


class CanaryNotFound(ModelNotFound):
    code = "canary_not_found"

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type
        ModelCacheError.__init__(
            self,
            f"no canary runs for {model_type!r}; start one with "
            f"`modelcache canary {model_type} VERSION --percent P`",
        )


class RegistryError(ModelCacheError):
    """The registry's files for one model could not be used; `path` is for logs, not clients."""

    code = "registry_error"

    def __init__(self, model_type: str, version: str | None, reason: str, path: str = "") -> None:
        self.model_type, self.version, self.reason, self.path = model_type, version, reason, path
        what = f"{model_type} {version}" if version else model_type
        super().__init__(f"{self.subject} of {what}: {reason}")

    subject = "registry entry"


class MetadataError(RegistryError):
    code = "bad_metadata"
    subject = "metadata"


class RegistryUnavailable(RegistryError):
    code = "registry_unavailable"
    subject = "registry files"


class StoreUnavailable(RegistryUnavailable):
    """An object store could not answer in time (down, slow, refused); the reason names the store."""

    subject = "registry"


class UnsafePath(RegistryError):
    code = "unsafe_path"
    subject = "registry files"


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


class ClusterRefusing(ClusterUnavailable):
    """Redis is reachable but refuses the command: an outage of Redis, not junk in the state.

    `reason` is Redis' own error code in lower case (`oom`, `misconf`, `noperm`, `busy`,
    `readonly`, `loading`, `masterdown`, `noreplicas`): a bounded set, used as a metric label.
    Same code (`cluster_unavailable`, 503, CLI exit 3) as an unreachable Redis.
    """

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class ClusterStateCorrupt(ModelCacheError):
    """Redis answers, but a key of the cluster state holds a value of the wrong type."""

    code = "cluster_state_corrupt"
