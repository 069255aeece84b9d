"""The registry's layout in an S3 bucket: `s3://bucket/prefix/<model_type>/<version>/...`.

The same guarantees as the filesystem registry (coordinator.registry.filesystem):

- A version exists once its `metadata.json` does. Publishing uploads the artifact
  first (in parts when large) and writes `metadata.json` last (invariant 6), so a
  publisher that dies mid-upload, or an aborted multipart upload, leaves nothing
  visible. Listing ignores keys without a `metadata.json` beside them.
- Versions order by PEP 440; "latest" is the highest stable one.
- `read_artifact` returns at most `size_bytes + 1` bytes; the loader hashes them
  before deserializing (invariant 5). Bytes that fail the check are never kept.

What differs is the cost of asking. Listings and metadata are cached for
`listing_ttl_s` and re-read on `refresh()` (reloads and pin changes call it through
the resolver), so a prediction never waits on the store. When the store fails,
the last good listing and metadata keep answering (stale beats down), artifacts
come from the disk tier when it holds them, and only a load that truly needs
the store fails, fast, with a `RegistryUnavailable` naming the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.errors import (
    AlreadyPublished,
    ArtifactError,
    InvalidName,
    MetadataError,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
    StoreUnavailable,
    VersionNotFound,
)
from coordinator.metadata import ARTIFACT_NAMES, ModelMetadata
from coordinator.registry.disk_tier import DiskTier
from coordinator.registry.filesystem import MAX_METADATA_BYTES, METADATA_FILE, detect_format
from coordinator.registry.store import (
    KeyNotFound,
    S3Store,
    StoreError,
    StoreLocation,
    StoreObserver,
    Timeouts,
)
from coordinator.versions import (
    normalize_version,
    parse_version,
    require_latest_stable,
    sort_versions,
    validate_model_type,
)

log = logging.getLogger("modelcache.registry")

Listing = dict[str, list[str]]
MISS_REFRESH_S = 1.0
"""A version missing from a listing at least this old re-reads the listing (once per period)."""


class ObjectStoreRegistry:
    """Read and publish models under one bucket prefix, with cached listings and a disk tier."""

    def __init__(
        self,
        location: StoreLocation,
        *,
        disk_tier: DiskTier | None = None,
        listing_ttl_s: float = 30.0,
        timeouts: Timeouts | None = None,
        observer: StoreObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,
    ) -> None:
        self.store = S3Store(location, timeouts=timeouts, observer=observer, client=client)
        self.disk_tier = disk_tier
        self.listing_ttl_s = listing_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._listed_at = float("-inf")
        self._list_error: StoreError | None = None  # the last listing failed: the store is down
        self._metadata: dict[tuple[str, str], tuple[ModelMetadata, float]] = {}

    @property
    def location(self) -> str:
        """`s3://bucket/prefix`, as messages and `modelcache models` show it."""
        return str(self.store.location)

    def __repr__(self) -> str:
        return f"ObjectStoreRegistry({self.location!r})"

    def refresh(self, model_type: str | None = None) -> None:
        """Treat the cached listing (and `model_type`'s metadata, or all) as stale: the next read asks.

        Stale, not forgotten: if the store is down then, the old answers still serve.
        """
        with self._lock:
            self._listed_at = float("-inf")
            for key, (meta, _) in list(self._metadata.items()):
                if model_type is None or key[0] == model_type:
                    self._metadata[key] = (meta, float("-inf"))

    # -- reading -----------------------------------------------------------------
    def scan(self) -> dict[str, list[str] | RegistryError]:
        """Each model type with its versions, ascending (the whole prefix in one listing)."""
        return dict(self._current_listing())

    def model_types(self) -> list[str]:
        return sorted(self._current_listing())

    def versions(self, model_type: str) -> list[str]:
        found = self._current_listing().get(validate_model_type(model_type))
        if not found:
            raise ModelNotFound(model_type, self.model_types())
        return list(found)

    def latest(self, model_type: str) -> str:
        return require_latest_stable(model_type, self.versions(model_type))

    def has_version(self, model_type: str, version: str) -> bool:
        """Whether `metadata.json` of this version exists now (asks the store)."""
        key = self.store.location.key(model_type, normalize_version(version), METADATA_FILE)
        try:
            return self.store.exists(key)
        except StoreError as exc:
            raise self._unavailable(model_type, version, exc) from None

    def metadata(self, model_type: str, version: str) -> ModelMetadata:
        """`metadata.json` of one version: cached for the listing TTL, stale when the store is down."""
        version = normalize_version(version)
        validate_model_type(model_type)
        cached = self._metadata.get((model_type, version))
        if cached is not None and self._clock() - cached[1] < self.listing_ttl_s:
            return cached[0]
        if cached is None:
            self._require_listed(model_type, version)
        key = self.store.location.key(model_type, version, METADATA_FILE)
        try:
            raw = self.store.read(key, MAX_METADATA_BYTES)
        except KeyNotFound:  # listed, but removed since
            with self._lock:
                self._metadata.pop((model_type, version), None)
            self.refresh(model_type)
            self._require_listed(model_type, version)
            raise VersionNotFound(model_type, version, self.versions(model_type)) from None
        except StoreError as exc:
            stale = cached[0] if cached else None
            if stale is None and self.disk_tier is not None:
                stale = self.disk_tier.metadata(model_type, version)
            if stale is not None:
                log.warning("%s; using the metadata of %s %s read earlier", exc, model_type, version)
                return stale
            raise self._unavailable(model_type, version, exc) from None
        meta = _parse_metadata(raw, model_type, version)
        with self._lock:
            self._metadata[(model_type, version)] = (meta, self._clock())
        return meta

    def read_artifact(self, meta: ModelMetadata) -> bytes:
        """At most `size_bytes + 1` bytes: from the disk tier when it holds them, else the store.

        Bytes fetched from the store go to the disk tier only if they are exactly
        `size_bytes` long and hash to `sha256`; the caller verifies them either way.
        """
        if self.disk_tier is not None:
            held = self.disk_tier.get(meta)
            if held is not None:
                return held
        digest = hashlib.sha256()
        key = self.store.location.key(meta.model_type, meta.version, meta.artifact)
        try:
            raw = self.store.read(key, meta.size_bytes, digest)
        except KeyNotFound:
            log.error("artifact %s is missing", self.artifact_path(meta))
            raise RegistryUnavailable(
                meta.model_type, meta.version, f"artifact {meta.artifact} is missing from {self.location}"
            ) from None
        except StoreError as exc:
            raise self._unavailable(meta.model_type, meta.version, exc) from None
        if self.disk_tier is not None and len(raw) == meta.size_bytes and digest.hexdigest() == meta.sha256:
            self.disk_tier.put(meta, raw)
        return raw

    def artifact_path(self, meta: ModelMetadata) -> str:
        return f"{self.location}/{meta.model_type}/{meta.version}/{meta.artifact}"

    def _require_listed(self, model_type: str, version: str) -> None:
        """Raise unless the listing has this version: unknown names cost no GET per request.

        A version missing from a listing older than `MISS_REFRESH_S` re-reads it once (it may
        be newly published); while the store is down, an unlisted version is unavailable, not
        unknown.
        """
        for attempt in (1, 2):
            listing = self._current_listing()
            if version in listing.get(model_type, ()):
                return
            with self._lock:
                recent = self._clock() - self._listed_at < MISS_REFRESH_S
                down = self._list_error
            if down is not None:
                raise self._unavailable(model_type, version, down)
            if attempt == 2 or recent:
                break
            self.refresh()
        known = listing.get(model_type)
        if not known:
            raise ModelNotFound(model_type, sorted(listing))
        raise VersionNotFound(model_type, version, known)

    def _current_listing(self) -> Listing:
        with self._lock:
            listing, fresh = self._listing, self._clock() - self._listed_at < self.listing_ttl_s
        if listing is not None and fresh:
            return listing
        try:
            listing = self._list()
        except StoreError as exc:
            with self._lock:
                self._list_error = exc
            if listing is not None:
                log.warning("%s; serving the listing read earlier", exc)
                return listing
            raise StoreUnavailable("", None, str(exc)) from None
        with self._lock:
            self._listing, self._listed_at, self._list_error = listing, self._clock(), None
        return listing

    def _list(self) -> Listing:
        """One pass over the prefix: a version is listed only where its metadata.json exists."""
        found: dict[str, list[str]] = {}
        root = self.store.location.key("")
        for key in self.store.keys(f"{root}/" if root else ""):
            parts = self.store.location.relative(key).split("/")
            if len(parts) != 3 or parts[2] != METADATA_FILE:
                continue
            model_type, version = parts[0], parts[1]
            try:
                validate_model_type(model_type)
                if normalize_version(version) != version:
                    continue  # publish writes normalized names; anything else is not ours
            except InvalidName:
                continue
            found.setdefault(model_type, []).append(version)
        return {mt: sort_versions(vs) for mt, vs in found.items()}

    def _unavailable(self, model_type: str, version: str | None, exc: StoreError) -> StoreUnavailable:
        log.error("%s %s: %s", model_type, version or "", exc)
        return StoreUnavailable(model_type, version, str(exc))

    # -- publishing ----------------------------------------------------------------
    def publish(
        self,
        artifact: str | Path,
        model_type: str,
        version: str,
        *,
        features: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None,
        task: str | None = None,
        force: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ModelMetadata:
        """Upload `artifact` (hashed while it is read), then `metadata.json`: visible whole or not at all.

        A forced republish deletes the old `metadata.json` first, so no reader ever pairs
        the old checksum with the new bytes (the version is briefly absent instead).
        """
        src = Path(artifact)
        if not src.is_file():
            raise ArtifactError(f"artifact {src} does not exist or is not a file")
        validate_model_type(model_type)
        parse_version(version)
        version = normalize_version(version)
        fmt = detect_format(src)
        meta_key = self.store.location.key(model_type, version, METADATA_FILE)
        try:
            if self.store.exists(meta_key):
                if not force:
                    raise AlreadyPublished(model_type, version)
                self.store.delete(meta_key)
            name = ARTIFACT_NAMES[fmt]
            sha256, size = self.store.upload(
                src, self.store.location.key(model_type, version, name), progress
            )
            meta = ModelMetadata(
                model_type=model_type,
                version=version,
                format=fmt,
                artifact=name,
                sha256=sha256,
                size_bytes=size,
                created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                features=tuple(features),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                task=task,
            )
            self.store.write(meta_key, (json.dumps(meta.to_dict(), indent=2) + "\n").encode())
        except StoreError as exc:
            raise self._unavailable(model_type, version, exc) from None
        self.refresh(model_type)
        return meta


def _parse_metadata(raw: bytes, model_type: str, version: str) -> ModelMetadata:
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(model_type, version, f"metadata.json is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(model_type, version, f"not valid JSON ({exc})") from None
    meta = ModelMetadata.from_dict(data, model_type, version)
    if (meta.model_type, meta.version) != (model_type, version):
        raise MetadataError(model_type, version, f"describes {meta.model_type} {meta.version} instead")
    return meta
