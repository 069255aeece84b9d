"""Load one published version: read, verify SHA-256, deserialize, with retries and bounds.

Nothing is deserialized before its checksum matches (invariant 5): the bytes
that were hashed are the very bytes handed to the deserializer, so a file
swapped between the check and the load cannot slip through.

Loads are bounded: an artifact is read at most `size_bytes + 1` bytes (one that
grew is refused before it is read whole), registry failures become
`ModelLoadError`s with a reason (so the service falls back as for a corrupt
artifact), and loads run on a `LoadPool`: a few dedicated daemon threads, so
reads stuck on a hung filesystem neither starve the default executor (metadata
routes, reloads) nor block the process from exiting.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from coordinator.errors import MetadataError, ModelNotFound, RegistryError, StoreUnavailable, UnsafePath
from coordinator.registry import AnyRegistry, ModelMetadata
from node import memory
from node.errors import ChecksumMismatch, ModelLoadError
from node.runtimes import LoadedModel, deserialize

log = logging.getLogger("modelcache.loader")

T = TypeVar("T")

# Registry error code -> `reason` label of modelcache_model_load_failures_total (bounded);
# an object store that cannot answer (StoreUnavailable) is `store`.
_REASONS = {"bad_metadata": "metadata", "unsafe_path": "symlink", "registry_unavailable": "io"}


class Loader:
    """Turns registry entries into `LoadedModel`s."""

    def __init__(
        self,
        registry: AnyRegistry,
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
        """The artifact's bytes, only if they are exactly `size_bytes` long and hash to `sha256`."""
        try:
            raw = self.registry.read_artifact(meta)
        except RegistryError as exc:
            raise _as_load_error(exc, meta.model_type, meta.version) from None
        if len(raw) > meta.size_bytes:
            log.error(
                "artifact %s is larger than size_bytes=%d", self.registry.artifact_path(meta), meta.size_bytes
            )
            raise ModelLoadError(
                meta.model_type,
                meta.version,
                f"artifact is larger than its recorded size_bytes ({meta.size_bytes}); "
                "refused before reading it whole: republish it",
                reason="size",
            )
        actual = hashlib.sha256(raw).hexdigest()
        if actual != meta.sha256:
            raise ChecksumMismatch(meta.model_type, meta.version, meta.sha256, actual)
        return raw

    def metadata(self, model_type: str, version: str) -> ModelMetadata:
        """`registry.metadata`, with unreadable or invalid metadata as a `ModelLoadError`."""
        try:
            return self.registry.metadata(model_type, version)
        except RegistryError as exc:
            raise _as_load_error(exc, model_type, version) from None

    def verify(self, model_type: str, version: str) -> None:
        """Check metadata and checksum without deserializing (a reload of an uncached model)."""
        self.read_verified(self.metadata(model_type, version))

    def load_once(
        self, model_type: str, version: str, before: Callable[[ModelMetadata], None] | None = None
    ) -> LoadedModel:
        """Read, verify, then (after `before(meta)`, e.g. making room in the cache) deserialize."""
        meta = self.metadata(model_type, version)
        raw = self.read_verified(meta)
        if before is not None:
            before(meta)
        if meta.format == "xgboost-json":
            # The verified JSON is parsed once into a throwaway booster; the served one is built
            # from its UBJ in a trimmed heap, so it does not sit amid the parse's freed fragments.
            raw = memory.json_to_ubj(raw)
        return deserialize(meta, raw)

    def load(
        self, model_type: str, version: str, before: Callable[[ModelMetadata], None] | None = None
    ) -> LoadedModel:
        """Load with exponential backoff; unknown models and bad metadata fail at once."""
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                return self.load_once(model_type, version, before)
            except ModelNotFound:
                raise
            except ModelLoadError as exc:
                if attempt == self.retries or exc.reason in (
                    "metadata",
                    "symlink",
                    "missing_dependency",
                    "store",
                ):
                    # Retrying cannot fix what is written on disk; an object store's client has
                    # already retried once, and more attempts would stretch a 503 past seconds.
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

    def load_charged(
        self, model_type: str, version: str, before: Callable[[ModelMetadata], None] | None = None
    ) -> tuple[LoadedModel, int]:
        """`load`, then the model's resident cost (node.memory), then freed heap returned to the OS.

        `before(meta)` runs once the artifact is verified, just before it is deserialized:
        the service makes room there, so a corrupt artifact never evicts anything.
        """
        model = self.load(model_type, version, before)
        cost = memory.resident_cost(model)
        memory.trim()  # a JSON parse leaves ~10x the file in freed heap
        return model, cost


def _as_load_error(exc: RegistryError, model_type: str, version: str) -> ModelLoadError:
    reason = "store" if isinstance(exc, StoreUnavailable) else _REASONS.get(exc.code, "io")
    if isinstance(exc, MetadataError | UnsafePath):
        log.error("%s %s: %s", model_type, version, exc)
    return ModelLoadError(model_type, version, f"{exc.subject}: {exc.reason}", reason=reason)


class LoadPool:
    """A fixed number of daemon threads for loads, recording what runs and since when.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one
    read stuck on a hung NFS mount would keep the process from ever stopping.
    """

    def __init__(self, workers: int = 4, name: str = "modelcache-load") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers, self.name = workers, name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any], str]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0
        self._running: dict[int, tuple[str, float]] = {}

    def submit(self, fn: Callable[[], T], label: str = "") -> Future[T]:
        """Run `fn` on a pool thread; the future is already running, so it cannot be cancelled."""
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self.workers
            if start:
                self._threads += 1
        self._queue.put((future, fn, label))
        if start:
            threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        return future

    def run(self, fn: Callable[[], T], timeout_s: float | None, label: str = "") -> T:
        """Run `fn` on the pool and wait at most `timeout_s`; raises TimeoutError beyond."""
        return self.submit(fn, label).result(timeout_s)

    def in_progress(self) -> list[tuple[str, float]]:
        """(label, seconds running) of every load on a pool thread now, longest first."""
        now = time.monotonic()
        with self._lock:
            running = [(label, now - started) for label, started in self._running.values()]
        return sorted(running, key=lambda r: -r[1])

    @property
    def queued(self) -> int:
        return self._queued

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._lock:
                self._idle += 1
            try:
                future, fn, label = self._queue.get(timeout=60.0)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    # Exit only if nothing arrived meanwhile; otherwise keep serving the queue.
                    if not self._queue.empty():
                        continue
                    self._threads -= 1
                return
            with self._lock:
                self._idle -= 1
                self._queued -= 1
                self._running[ident] = (label, time.monotonic())
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # handed to the waiter; the thread goes on
                error = exc
            # No longer "in progress" before anyone sees the result.
            with self._lock:
                self._running.pop(ident, None)
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class LoadBudget:
    """A token bucket: `per_minute` loads, refilled evenly, with a burst of `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Spend one load: 0.0 if allowed, else the seconds until one is available."""
        with self._lock:
            now = self._clock()
            rate = self.per_minute / 60.0
            self._tokens = min(float(self.per_minute), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / rate
