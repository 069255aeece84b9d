"""A byte-bounded local directory of verified artifacts, so a node reloads from disk, not the store.

    <dir>/<model_type>/<version>/metadata.json   as read from the store
    <dir>/<model_type>/<version>/<artifact>      bytes that hashed to its sha256

Only bytes whose SHA-256 matched their metadata are written (the object-store
registry calls `put` after verifying), and every read hashes them again: a file
altered on the node's disk is dropped and fetched anew, never served (invariant 5
holds for the tier as for the store). Entries are written to a hidden temporary
directory and renamed into place, so a crash leaves no half entry. Eviction is
least recently used (by the artifact's mtime, touched on every hit) until the
tier fits `max_bytes`; an artifact larger than the whole budget is not kept.

The tier also remembers each entry's metadata, so a node whose store is down can
still load what it has on disk after a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

from coordinator.errors import InvalidName, MetadataError
from coordinator.metadata import ModelMetadata
from coordinator.versions import normalize_version, validate_model_type

log = logging.getLogger("modelcache.disk_tier")
_META = "metadata.json"

Key = tuple[str, str]


class TierObserver(Protocol):
    """Where the tier reports hits, misses and its size (node.metrics implements it)."""

    def disk_tier_lookup(self, hit: bool) -> None: ...
    def disk_tier_size(self, nbytes: int) -> None: ...


class DiskTier:
    """Verified artifacts on local disk, bounded to `max_bytes`, least recently used evicted first."""

    def __init__(
        self, root: str | os.PathLike[str], max_bytes: int, observer: TierObserver | None = None
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.observer = observer
        self._lock = threading.Lock()
        self._entries: dict[Key, tuple[int, float]] = {}  # key -> (artifact bytes, last used)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index()

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for size, _ in self._entries.values())

    def held(self) -> list[Key]:
        """The (model_type, version) entries on disk, sorted."""
        with self._lock:
            return sorted(self._entries)

    def metadata(self, model_type: str, version: str) -> ModelMetadata | None:
        """The metadata stored with an entry, or None."""
        try:
            raw = (self.root / model_type / version / _META).read_bytes()
            return ModelMetadata.from_dict(json.loads(raw), model_type, version)
        except (OSError, ValueError, MetadataError):
            return None

    def get(self, meta: ModelMetadata) -> bytes | None:
        """The artifact's bytes if held and they still hash to `meta.sha256`, else None (a miss)."""
        key = (meta.model_type, meta.version)
        raw = self._read_matching(meta)
        if raw is not None and hashlib.sha256(raw).hexdigest() != meta.sha256:
            log.error("disk tier copy of %s %s no longer matches its sha256: dropped", *key)
            self.drop(key)
            raw = None
        if raw is not None:
            with self._lock:
                if key in self._entries:
                    self._entries[key] = (self._entries[key][0], time.time())
            with contextlib.suppress(OSError):  # the recency order is kept in memory too
                os.utime(self.root / key[0] / key[1] / meta.artifact)
        if self.observer is not None:
            self.observer.disk_tier_lookup(raw is not None)
        return raw

    def put(self, meta: ModelMetadata, verified: bytes) -> None:
        """Keep `verified` (bytes that hashed to `meta.sha256`); evict older entries to fit."""
        size = len(verified)
        if size > self.max_bytes:
            return
        key = (meta.model_type, meta.version)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".entry-", dir=self.root))
            try:
                (tmp / meta.artifact).write_bytes(verified)
                (tmp / _META).write_text(json.dumps(meta.to_dict()))
                final = self.root / meta.model_type / meta.version
                final.parent.mkdir(exist_ok=True)
                with self._lock:
                    if final.exists():
                        shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
                    self._entries[key] = (size, time.time())
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            # A full or read-only disk costs the tier, never the load that is under way.
            log.warning("cannot keep %s %s on the disk tier: %s", *key, exc)
            return
        self._evict()

    def drop(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)
            shutil.rmtree(self.root / key[0] / key[1], ignore_errors=True)
        self._report()

    def _read_matching(self, meta: ModelMetadata) -> bytes | None:
        held = self.metadata(meta.model_type, meta.version)
        if held is None or held.sha256 != meta.sha256 or held.artifact != meta.artifact:
            return None  # not held, or republished since (--force): fetch the new bytes
        try:
            with open(self.root / meta.model_type / meta.version / meta.artifact, "rb") as fh:
                return fh.read(meta.size_bytes + 1)
        except OSError:
            return None

    def _evict(self) -> None:
        with self._lock:
            total = sum(size for size, _ in self._entries.values())
            for key, (size, _) in sorted(self._entries.items(), key=lambda e: e[1][1]):
                if total <= self.max_bytes:
                    break
                del self._entries[key]
                shutil.rmtree(self.root / key[0] / key[1], ignore_errors=True)
                total -= size
                log.info("disk tier: evicted %s %s (%d bytes)", *key, size)
        self._report()

    def _report(self) -> None:
        if self.observer is not None:
            self.observer.disk_tier_size(self.bytes)

    def _index(self) -> None:
        """Rebuild the index from disk (a restarted node keeps its tier), dropping leftovers."""
        for tmp in self.root.glob(".entry-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for meta_file in self.root.glob(f"*/*/{_META}"):
            version_dir = meta_file.parent
            try:
                model_type = validate_model_type(version_dir.parent.name)
                version = normalize_version(version_dir.name)
            except InvalidName:
                continue
            meta = self.metadata(model_type, version)
            artifact = version_dir / meta.artifact if meta else None
            if meta is None or artifact is None or not artifact.is_file():
                shutil.rmtree(version_dir, ignore_errors=True)
                continue
            st = artifact.stat()
            self._entries[(model_type, version)] = (st.st_size, st.st_mtime)
        self._evict()
