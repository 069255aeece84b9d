"""The filesystem registry: a directory tree of immutable, checksummed model versions.

    <root>/<model_type>/<version>/metadata.json
    <root>/<model_type>/<version>/model.ubj | model.json | model.joblib | model.txt | model.onnx

Publishing writes into a hidden temporary directory beside the target and
renames it into place, so a version appears whole or not at all (invariant 6).
Published directories are made world-readable (0777 & ~umask, so 0755 under the
usual umask 022): nodes may run as a different user than the publisher.

Filesystems fail, so reading is defensive. Every failure is about one model and
raises a `RegistryError` naming it (paths go to logs, never into the message);
listing skips an unreadable model type and goes on with the rest. metadata.json
is read at most `MAX_METADATA_BYTES` and validated field by field; an artifact
is read at most `size_bytes + 1` bytes, so the caller can refuse one that grew.

Symlinks: nothing below the root is followed (the root itself may be a symlink,
e.g. to a mount). Files are opened one path component at a time with
`O_NOFOLLOW`, so a symlinked model-type directory, version directory,
metadata.json or artifact is refused with `UnsafePath` (a load failure: the node
falls back as for a corrupt artifact), and listing ignores symlinked directories.
Names are validated too, so no path can leave the root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from coordinator.errors import (
    AlreadyPublished,
    ArtifactError,
    InvalidName,
    MetadataError,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
    UnsafePath,
    VersionNotFound,
)
from coordinator.metadata import ARTIFACT_NAMES, ModelMetadata
from coordinator.versions import (
    normalize_version,
    parse_version,
    require_latest_stable,
    sort_versions,
    validate_model_type,
)

FORMATS = {
    ".ubj": "xgboost-ubj",
    ".json": "xgboost-json",
    ".joblib": "joblib",
    ".pkl": "joblib",
    ".txt": "lightgbm-txt",
    ".onnx": "onnx",
}
METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the registry must be refused, not block open() forever
# (it changes nothing for regular files, the only kind read after the check).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

log = logging.getLogger("modelcache.registry")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_and_hash(src: Path, dest: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """Copy `src` to `dest` and return the SHA-256 of the bytes written: one read of `src`.

    `progress(done, total)` is called after every chunk (total is the size at the start).
    """
    digest = hashlib.sha256()
    total = src.stat().st_size
    done = 0
    with src.open("rb") as fin, dest.open("xb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            digest.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtifactError(
            f"cannot tell the format of {path.name}: expected .ubj or .json (XGBoost), "
            ".joblib/.pkl (joblib), .txt (LightGBM) or .onnx (ONNX)"
        )
    return fmt


class Registry:
    """Read and publish models under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    @property
    def location(self) -> str:
        """The root's absolute path, as messages and `modelcache models` show it."""
        return str(self.root.resolve())

    def refresh(self, model_type: str | None = None) -> None:
        """Nothing to do: every read looks at the directory (the object store caches, this does not)."""

    def has_version(self, model_type: str, version: str) -> bool:
        """Whether this version's directory exists (published, or being replaced)."""
        return (self.root / model_type / normalize_version(version)).exists()

    # -- reading -----------------------------------------------------------
    def scan(self) -> dict[str, list[str] | RegistryError]:
        """Each model type: its versions (ascending), or the error that kept them from being read."""
        try:
            with os.scandir(self.root) as it:
                entries = list(it)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("cannot list the registry %s: %s", self.root, exc)
            raise RegistryUnavailable("", None, f"cannot list the registry ({exc.strerror})") from None
        out: dict[str, list[str] | RegistryError] = {}
        for entry in entries:
            try:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue  # a symlinked model type is not followed (module docstring)
                validate_model_type(entry.name)
                found = self._version_dirs(entry.name)
            except InvalidName:
                continue
            except RegistryError as exc:
                out[entry.name] = exc
                continue
            except OSError as exc:
                log.warning("cannot inspect %s: %s", entry.path, exc)
                out[entry.name] = RegistryUnavailable(entry.name, None, f"cannot inspect ({exc.strerror})")
                continue
            if found:
                out[entry.name] = sort_versions(found)
        return out

    def model_types(self) -> list[str]:
        """Every readable model type with at least one published version, sorted."""
        return sorted(mt for mt, found in self.scan().items() if isinstance(found, list))

    def versions(self, model_type: str) -> list[str]:
        """Published versions of `model_type`, ascending by PEP 440."""
        found = self._version_dirs(validate_model_type(model_type))
        if not found:
            raise ModelNotFound(model_type, self.model_types())
        return sort_versions(found)

    def latest(self, model_type: str) -> str:
        """The highest stable version; pre-releases only ever by explicit request."""
        return require_latest_stable(model_type, self.versions(model_type))

    def metadata(self, model_type: str, version: str) -> ModelMetadata:
        """Read and validate `metadata.json` only; the artifact is not touched."""
        version = normalize_version(version)
        validate_model_type(model_type)
        try:
            raw = self._read(model_type, version, METADATA_FILE, MAX_METADATA_BYTES)
        except FileNotFoundError:
            known = self._version_dirs(model_type)
            if not known:
                raise ModelNotFound(model_type, self.model_types()) from None
            where = self.root / model_type / version
            if version in known or (where.is_dir() and not where.is_symlink()):
                raise MetadataError(model_type, version, "metadata.json is missing") from None
            raise VersionNotFound(model_type, version, sort_versions(known)) from None
        if len(raw) > MAX_METADATA_BYTES:
            raise MetadataError(
                model_type, version, f"metadata.json is larger than {MAX_METADATA_BYTES} bytes"
            )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MetadataError(model_type, version, f"not valid JSON ({exc})") from None
        meta = ModelMetadata.from_dict(data, model_type, version)
        if (meta.model_type, meta.version) != (model_type, version):
            raise MetadataError(model_type, version, f"describes {meta.model_type} {meta.version} instead")
        return meta

    def read_artifact(self, meta: ModelMetadata) -> bytes:
        """At most `size_bytes + 1` bytes of the artifact: more than `size_bytes` means it grew."""
        try:
            return self._read(meta.model_type, meta.version, meta.artifact, meta.size_bytes)
        except FileNotFoundError:
            log.error("artifact %s is missing", self.artifact_path(meta))
            raise RegistryUnavailable(
                meta.model_type, meta.version, f"artifact {meta.artifact} is missing"
            ) from None

    def artifact_path(self, meta: ModelMetadata) -> Path:
        return self.root / meta.model_type / meta.version / meta.artifact

    def _read(self, model_type: str, version: str, name: str, limit: int) -> bytes:
        """Up to `limit + 1` bytes of a regular file, opened without following symlinks.

        FileNotFoundError passes through (the caller knows what is missing); every
        other OSError becomes a `RegistryError` for this model.
        """
        path = self.root / model_type / version / name
        try:
            fd = self._open_nofollow((model_type, version, name))
        except FileNotFoundError:
            raise
        except NotADirectoryError as exc:
            if any(p.is_symlink() for p in (self.root / model_type, self.root / model_type / version)):
                raise self._os_error(model_type, version, name, exc) from None  # refused as unsafe
            # A plain file where the version's directory should be: no such version (it is not listed).
            raise FileNotFoundError(errno.ENOENT, f"{model_type}/{version} is not a directory") from None
        except OSError as exc:
            raise self._os_error(model_type, version, name, exc) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                log.error("%s is not a regular file", path)
                raise RegistryUnavailable(model_type, version, f"{name} is not a regular file", str(path))
            chunks, remaining = [], limit + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise self._os_error(model_type, version, name, exc) from None
        finally:
            os.close(fd)

    def _open_nofollow(self, parts: tuple[str, ...]) -> int:
        # One component at a time relative to the parent's fd: a symlink anywhere
        # below the root fails the open (ELOOP/ENOTDIR), with no check-then-use race.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, part in enumerate(parts):
            try:
                child = os.open(part, _FILE_FLAGS if i == len(parts) - 1 else _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _os_error(self, model_type: str, version: str, name: str, exc: OSError) -> RegistryError:
        path = self.root / model_type / version / name
        log.error("cannot read %s: %s", path, exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self._symlink_on_the_way(path):
            reason = f"{name} is reached through a symlink, which the registry refuses"
            return UnsafePath(model_type, version, reason, str(path))
        return RegistryUnavailable(model_type, version, f"cannot read {name} ({exc.strerror})", str(path))

    def _symlink_on_the_way(self, path: Path) -> bool:
        return any(p.is_symlink() for p in (path, path.parent, path.parent.parent))

    def _version_dirs(self, model_type: str) -> list[str]:
        model_dir = self.root / model_type
        try:
            if model_dir.is_symlink():
                log.warning("ignoring %s: the registry does not follow symlinks", model_dir)
                return []
            with os.scandir(model_dir) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            log.error("cannot list %s: %s", model_dir, exc)
            raise RegistryUnavailable(
                model_type, None, f"cannot list its versions ({exc.strerror})", str(model_dir)
            ) from None
        out = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                version = normalize_version(entry.name)
                if entry.is_symlink():
                    log.warning("ignoring %s: the registry does not follow symlinks", entry.path)
                    continue
                os.lstat(os.path.join(entry.path, METADATA_FILE))
            except InvalidName:
                continue
            except (FileNotFoundError, NotADirectoryError):
                continue  # no metadata.json: half-written, or not a version
            except OSError as exc:
                # It exists but cannot be inspected: list it, so loading it fails with the
                # reason (and falls back) instead of the version silently vanishing.
                log.warning("cannot inspect %s: %s", entry.path, exc)
            out.append(version)
        return out

    # -- publishing --------------------------------------------------------
    def publish(
        self,
        artifact: str | os.PathLike[str],
        model_type: str,
        version: str,
        *,
        features: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None,
        task: str | None = None,
        force: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ModelMetadata:
        """Copy `artifact` into the registry with its checksum, atomically.

        The artifact is read once (hashed while it is copied); `progress(done, total)` in bytes.
        """
        src = Path(artifact)
        if not src.is_file():
            raise ArtifactError(f"artifact {src} does not exist or is not a file")
        validate_model_type(model_type)
        parse_version(version)
        version = normalize_version(version)
        fmt = detect_format(src)
        final = self.root / model_type / version
        if final.exists() and not force:
            raise AlreadyPublished(model_type, version)

        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=final.parent))
        try:
            # mkdtemp makes 0700; nodes may run as another user, so apply the umask as mkdir would.
            os.chmod(tmp, 0o777 & ~_umask())
            dest = tmp / ARTIFACT_NAMES[fmt]
            sha256 = copy_and_hash(src, dest, progress)
            meta = ModelMetadata(
                model_type=model_type,
                version=version,
                format=fmt,
                artifact=dest.name,
                sha256=sha256,
                size_bytes=dest.stat().st_size,
                created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                features=tuple(features),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                task=task,
            )
            (tmp / METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
            _fsync_dir(tmp)
            self._swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    @staticmethod
    def _swap_into_place(tmp: Path, final: Path) -> None:
        # rename() cannot replace a non-empty directory, so a forced republish
        # moves the old version aside first and removes it afterwards.
        old = None
        if final.exists():
            old = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
