"""Errors raised by the node (the control plane's errors live in coordinator.errors).

ModelCacheError (coordinator.errors)
├── InvalidInput         a request the model cannot take (feature count, names, values)
├── BatchTooLarge        more instances than MODELCACHE_MAX_BATCH
├── ModelLoadError       the artifact could not be loaded
│   └── ChecksumMismatch the artifact's bytes do not match metadata.sha256
└── NotReady             the node is still warming up
"""

from __future__ import annotations

from coordinator.errors import ModelCacheError


class InvalidInput(ModelCacheError):
    code = "invalid_input"


class BatchTooLarge(ModelCacheError):
    code = "batch_too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(
            f"batch of {size} instances exceeds the limit of {limit} "
            "(MODELCACHE_MAX_BATCH); split it into smaller requests"
        )


class ModelLoadError(ModelCacheError):
    code = "model_load_failed"
    reason = "deserialize"

    def __init__(self, model_type: str, version: str, detail: str) -> None:
        self.model_type, self.version, self.detail = model_type, version, detail
        super().__init__(f"could not load {model_type} {version}: {detail}")


class ChecksumMismatch(ModelLoadError):
    code = "checksum_mismatch"
    reason = "checksum"

    def __init__(self, model_type: str, version: str, expected: str, actual: str) -> None:
        super().__init__(
            model_type,
            version,
            f"artifact sha256 {actual[:12]}… does not match metadata {expected[:12]}…; "
            "the file is corrupt or was altered: republish it",
        )


class NotReady(ModelCacheError):
    code = "not_ready"
