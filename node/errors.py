"""Errors raised by the node (the control plane's errors live in coordinator.errors).

ModelCacheError (coordinator.errors)
├── InvalidInput         a request the model cannot take (feature count, names, values)
├── BatchTooLarge        more instances than MODELCACHE_MAX_BATCH
├── ModelLoadError       the version could not be loaded (`reason`: deserialize, checksum,
│   │                    metadata, io, symlink, size, timeout, too_large: bounded metric label values)
│   ├── ChecksumMismatch the artifact's bytes do not match metadata.sha256
│   ├── LoadTimeout      the load did not finish within MODELCACHE_LOAD_TIMEOUT_S
│   └── ModelTooLarge    the loaded model alone costs more than MODELCACHE_CACHE_MAX_BYTES
├── Throttled            a 429 with Retry-After: come back later, nothing is wrong
│   ├── LoadRateLimited  too many on-demand loads of non-default versions (per node)
│   └── ModelOverloaded  one model's prediction queue is full (the others are unaffected)
└── NotReady             the node is still warming up
"""

from __future__ import annotations

import math

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

    def __init__(self, model_type: str, version: str, detail: str, reason: str | None = None) -> None:
        self.model_type, self.version, self.detail = model_type, version, detail
        if reason is not None:
            self.reason = reason
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


class LoadTimeout(ModelLoadError):
    code = "load_timeout"
    reason = "timeout"

    def __init__(self, model_type: str, version: str, timeout_s: float) -> None:
        super().__init__(
            model_type,
            version,
            f"loading took longer than {timeout_s:g}s (MODELCACHE_LOAD_TIMEOUT_S); "
            "the registry's filesystem may be slow or hung",
        )


class ModelTooLarge(ModelLoadError):
    """Refused rather than cached over the byte budget: a retry cannot help, a bigger budget can."""

    code = "model_too_large"
    reason = "too_large"

    def __init__(self, model_type: str, version: str, cost: int, budget: int) -> None:
        self.cost, self.budget = cost, budget
        super().__init__(
            model_type,
            version,
            f"it needs {cost} bytes resident, more than the whole cache budget of {budget} bytes "
            "(MODELCACHE_CACHE_MAX_BYTES); raise the budget or serve it from a node with a larger one",
        )


class Throttled(ModelCacheError):
    """A 429 that tells the client when to come back (the Retry-After header)."""

    retry_after_s: int = 1


class LoadRateLimited(Throttled):
    """Explicit non-default versions may be loaded on demand only so often per node."""

    code = "too_many_loads"

    def __init__(self, model_type: str, version: str, per_minute: int, retry_after_s: float) -> None:
        self.model_type, self.version = model_type, version
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"{model_type} {version} is not cached and this node already loaded {per_minute} "
            f"non-default versions in the last minute (MODELCACHE_ONDEMAND_LOADS_PER_MIN); "
            f"retry in {self.retry_after_s}s or request the default version"
        )


class ModelOverloaded(Throttled):
    """A model's queue of rows waiting to be predicted is full: it answers at once instead of
    growing a backlog that would delay its own callers for seconds (the other models have
    lanes of their own and are not slowed)."""

    code = "model_overloaded"

    def __init__(self, model_type: str, queued_rows: int, limit: int) -> None:
        self.model_type = model_type
        super().__init__(
            f"{model_type} already has {queued_rows} rows waiting to be predicted on this node "
            f"(MODELCACHE_MODEL_QUEUE_MAX_ROWS={limit}); retry shortly, spread the load over more "
            "nodes or send smaller batches"
        )


class NotReady(ModelCacheError):
    code = "not_ready"
