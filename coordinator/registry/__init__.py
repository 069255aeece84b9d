"""The model registry: a directory tree, or the same layout in an object store.

    <root>/<model_type>/<version>/metadata.json
    <root>/<model_type>/<version>/model.ubj | model.json | model.joblib

`open_registry(location)` picks the backend from the location: a path is a
`Registry` (filesystem), `s3://bucket/prefix` an `ObjectStoreRegistry` (S3 and
S3-compatible stores, with an optional verified disk tier). Both answer the same
reading calls (`scan`, `model_types`, `versions`, `latest`, `metadata`,
`read_artifact`), publish the same way (artifact first, `metadata.json` last:
invariant 6) and describe themselves by `location`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coordinator.metadata import ModelMetadata
from coordinator.registry.filesystem import (
    FORMATS,
    MAX_METADATA_BYTES,
    METADATA_FILE,
    Registry,
    copy_and_hash,
    detect_format,
    sha256_file,
)
from coordinator.registry.objectstore import ObjectStoreRegistry
from coordinator.registry.store import StoreLocation, is_store_url

AnyRegistry = Registry | ObjectStoreRegistry
"""Either backend: every caller outside this package reads and publishes through these calls."""


def open_registry(location: str | os.PathLike[str], **store_options: Any) -> AnyRegistry:
    """The registry at `location`: `s3://bucket/prefix` for an object store, else a directory.

    `store_options` go to `ObjectStoreRegistry` (disk tier, timeouts, listing TTL, observer)
    and are ignored for a directory, so one call site serves both.
    """
    text = os.fspath(location)
    if is_store_url(text):
        return ObjectStoreRegistry(StoreLocation.parse(text), **store_options)
    return Registry(Path(text))


__all__ = [
    "FORMATS",
    "MAX_METADATA_BYTES",
    "METADATA_FILE",
    "AnyRegistry",
    "ModelMetadata",
    "ObjectStoreRegistry",
    "Registry",
    "StoreLocation",
    "copy_and_hash",
    "detect_format",
    "is_store_url",
    "open_registry",
    "sha256_file",
]
