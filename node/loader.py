"""Load one published version: read, verify SHA-256, deserialize, with retries.

Nothing is deserialized before its checksum matches (invariant 5): the bytes
that were hashed are the very bytes handed to the deserializer, so a file
swapped between the check and the load cannot slip through.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from coordinator.errors import MetadataError, ModelNotFound
from coordinator.registry import ModelMetadata, Registry
from node.errors import ChecksumMismatch, ModelLoadError
from node.runtime import LoadedModel, deserialize

log = logging.getLogger("modelcache.loader")


class Loader:
    """Turns registry entries into `LoadedModel`s."""

    def __init__(
        self,
        registry: Registry,
        *,
        retries: int = 3,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self._sleep = sleep

    def read_verified(self, meta: ModelMetadata) -> bytes:
        """The artifact's bytes, only if they hash to `meta.sha256`."""
        path = self.registry.artifact_path(meta)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(meta.model_type, meta.version, f"cannot read {path}: {exc}") from exc
        actual = hashlib.sha256(raw).hexdigest()
        if actual != meta.sha256:
            raise ChecksumMismatch(meta.model_type, meta.version, meta.sha256, actual)
        return raw

    def load_once(self, model_type: str, version: str) -> LoadedModel:
        meta = self.registry.metadata(model_type, version)
        return deserialize(meta, self.read_verified(meta))

    def load(self, model_type: str, version: str) -> LoadedModel:
        """Load with exponential backoff; unknown models and bad metadata fail at once."""
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                return self.load_once(model_type, version)
            except (ModelNotFound, MetadataError):
                raise
            except ModelLoadError as exc:
                if attempt == self.retries:
                    raise
                log.warning(
                    "load of %s %s failed (attempt %d/%d, retrying in %.2fs): %s",
                    model_type,
                    version,
                    attempt,
                    self.retries,
                    delay,
                    exc.detail,
                )
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
