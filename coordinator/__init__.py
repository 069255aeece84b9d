"""The control plane: model registry, cluster state and events in Redis, command line."""

from coordinator.errors import (
    AlreadyPublished,
    ArtifactError,
    ClusterStateCorrupt,
    ClusterUnavailable,
    InvalidName,
    MetadataError,
    ModelCacheError,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
    UnsafePath,
    VersionNotFound,
)
from coordinator.registry import ModelMetadata, ObjectStoreRegistry, Registry, open_registry

__all__ = [
    "AlreadyPublished",
    "ArtifactError",
    "ClusterStateCorrupt",
    "ClusterUnavailable",
    "InvalidName",
    "MetadataError",
    "ModelCacheError",
    "ModelMetadata",
    "ModelNotFound",
    "ObjectStoreRegistry",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "UnsafePath",
    "VersionNotFound",
    "open_registry",
]
