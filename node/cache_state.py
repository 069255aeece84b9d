"""The warm-restart state file: what a node held (model, version, uses), written and read safely.

One small wire contract (`CacheState`, `to_json`/`from_json`), used by the writer and the
reader alike. Written atomically: a temporary file in the same directory, fsynced, renamed
over the old one, then the directory fsynced, so a crash leaves the old file or the new
one, never half of either. Read like untrusted input: a file that is missing, unreadable,
larger than `MAX_BYTES`, not JSON, of another format or version, or whose entries are not
well formed is refused with a `StateFileError` naming why (the node logs it and starts
cold); a bad entry alone is dropped, the others kept. The file is a hint, never truth
(invariant 7): what to restore is resolved against the registry and the cluster again.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.errors import InvalidName
from coordinator.versions import normalize_version, validate_model_type

FORMAT = "modelcache-cache-state"
VERSION = 1
MAX_BYTES = 1 << 20
"""Largest state file read: ~5,000 entries; a bigger one is not ours (or is junk)."""
MAX_ENTRIES = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

__all__ = ["CacheState", "SavedEntry", "StateFileError", "read_state", "state_path", "write_state"]


class StateFileError(Exception):
    """The state file cannot be used; `reason` says why in a sentence for the log."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"state file {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class SavedEntry:
    """One cached model when the state was saved."""

    model_type: str
    version: str
    uses: int
    """The load and every hit since (node.cache.EntryStats.uses): how hot it was."""
    last_used: float
    """Unix time of its last hit (or its load)."""
    resident_bytes: int = 0
    """What the byte budget charged for it: restore plans against the budget with it."""
    default: bool = True
    """It was the version served when a request names none: restore what is the default now."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "version": self.version,
            "uses": self.uses,
            "last_used": self.last_used,
            "resident_bytes": self.resident_bytes,
            "default": self.default,
        }

    @classmethod
    def from_json(cls, raw: Any) -> SavedEntry:
        """One entry, validated field by field (ValueError naming the field otherwise)."""
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        model_type, version = raw.get("model_type"), raw.get("version")
        if not isinstance(model_type, str) or not isinstance(version, str):
            raise ValueError("model_type and version must be strings")
        try:
            validate_model_type(model_type)
            version = normalize_version(version)
        except InvalidName as exc:
            raise ValueError(exc.reason) from None
        uses, last_used = raw.get("uses"), raw.get("last_used", 0.0)
        resident, default = raw.get("resident_bytes", 0), raw.get("default", True)
        if not _count(uses) or uses < 1:
            raise ValueError("uses must be a positive integer")
        if not _count(resident):
            raise ValueError("resident_bytes must be a non-negative integer")
        if not _number(last_used):
            raise ValueError("last_used must be a number")
        if not isinstance(default, bool):
            raise ValueError("default must be true or false")
        return cls(model_type, version, uses, float(last_used), resident, default)


@dataclass(frozen=True)
class CacheState:
    """What one node held when it saved: its entries, hottest first."""

    node_id: str
    saved_at: float
    entries: list[SavedEntry] = field(default_factory=list)
    dropped: int = 0
    """Entries of the file that were not well formed (read side only)."""

    def hottest(self) -> list[SavedEntry]:
        """Entries by uses, then by recency: the order to restore them in."""
        return sorted(self.entries, key=lambda e: (-e.uses, -e.last_used))

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "node_id": self.node_id,
            "saved_at": self.saved_at,
            "entries": [e.to_json() for e in self.entries[:MAX_ENTRIES]],
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> CacheState:
        """Parse and validate; StateFileError when the file as a whole is unusable."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise StateFileError(path, "not JSON (truncated or not ours)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StateFileError(path, f"not a {FORMAT} file")
        if doc.get("version") != VERSION:
            raise StateFileError(path, f"format version {doc.get('version')!r}, this node reads {VERSION}")
        raw_entries, node_id, saved_at = doc.get("entries"), doc.get("node_id", ""), doc.get("saved_at", 0.0)
        if not isinstance(raw_entries, list) or len(raw_entries) > MAX_ENTRIES:
            raise StateFileError(path, f"`entries` must be a list of at most {MAX_ENTRIES}")
        if not isinstance(node_id, str) or not _number(saved_at):
            raise StateFileError(path, "`node_id` must be a string and `saved_at` a number")
        entries, dropped = [], 0
        for raw in raw_entries:
            try:
                entries.append(SavedEntry.from_json(raw))
            except ValueError:
                dropped += 1
        return cls(node_id, float(saved_at), entries, dropped)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def state_path(state_dir: Path, node_id: str) -> Path:
    """The file of `node_id` in `state_dir`: several nodes can share one directory."""
    return state_dir / f"cache-state-{_UNSAFE.sub('_', node_id)[:200]}.json"


def write_state(path: Path, state: CacheState) -> None:
    """Write atomically: temp file in the same directory, fsync, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(state.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def read_state(path: Path) -> CacheState | None:
    """The saved state; None when there is none; StateFileError when it cannot be used."""
    try:
        # Non-blocking open, then check what was opened: a FIFO (checked before the open, it
        # could be swapped in after the check) would block a plain open for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateFileError(path, "not a regular file")
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(path, f"unreadable: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise StateFileError(path, f"larger than {MAX_BYTES} bytes")
    return CacheState.from_json(data, path)
