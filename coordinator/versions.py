"""Validation and PEP 440 ordering of model types and versions."""

from __future__ import annotations

import re
from collections.abc import Iterable

from packaging.version import InvalidVersion, Version

from coordinator.errors import InvalidName, VersionNotFound

MODEL_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_VERSION_LEN = 64


def validate_model_type(model_type: str) -> str:
    """Return `model_type` if it is a safe registry name, else raise InvalidName."""
    if not isinstance(model_type, str) or not model_type:
        raise InvalidName("model type", str(model_type), "must not be empty")
    if len(model_type) > 128:
        raise InvalidName("model type", model_type[:40] + "...", "longer than 128 characters")
    # The regex forbids '/', '\\' and a leading '.', so '..' can never be a path segment.
    if not MODEL_TYPE_RE.fullmatch(model_type):
        raise InvalidName(
            "model type", model_type, "use letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return model_type


def parse_version(version: str) -> Version:
    """Parse a PEP 440 version (`2.0.0-beta` is `2.0.0b0`), raising InvalidName."""
    if not isinstance(version, str) or not version.strip():
        raise InvalidName("version", str(version), "must not be empty")
    if len(version) > MAX_VERSION_LEN:
        raise InvalidName("version", version[:40] + "...", "longer than 64 characters")
    try:
        return Version(version)
    except InvalidVersion:
        raise InvalidName("version", version, "not a PEP 440 version such as 1.2.0") from None


def normalize_version(version: str) -> str:
    """The canonical spelling of a version, used as directory name and cache key."""
    return str(parse_version(version))


def is_prerelease(version: str) -> bool:
    v = parse_version(version)
    return v.is_prerelease or v.is_devrelease


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Ascending by PEP 440, never by string (`1.9.0` < `1.10.0`)."""
    return sorted(versions, key=Version)


def latest_stable(versions: Iterable[str]) -> str | None:
    """The highest non-pre-release version, or None."""
    stable = [v for v in versions if not is_prerelease(v)]
    return sort_versions(stable)[-1] if stable else None


def require_latest_stable(model_type: str, versions: list[str]) -> str:
    """What a registry's `latest` answers: the highest stable version, else VersionNotFound."""
    latest = latest_stable(versions)
    if latest is None:
        raise VersionNotFound(model_type, "latest (stable)", versions)
    return latest
