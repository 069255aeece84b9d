"""The disk tier: byte-bounded, least recently used out first, re-verified on every read."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coordinator.metadata import ModelMetadata
from coordinator.registry.disk_tier import DiskTier


def _meta(model_type: str, data: bytes, version: str = "1.0") -> ModelMetadata:
    return ModelMetadata(
        model_type=model_type,
        version=version,
        format="joblib",
        artifact="model.joblib",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        created_at="2026-01-01T00:00:00Z",
    )


class Seen:
    def __init__(self) -> None:
        self.hits = self.misses = self.size = 0

    def disk_tier_lookup(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def disk_tier_size(self, nbytes: int) -> None:
        self.size = nbytes


def test_hit_miss_and_byte_bound(tmp_path: Path) -> None:
    seen = Seen()
    tier = DiskTier(tmp_path, max_bytes=250, observer=seen)
    a, b, c = (bytes([i]) * 100 for i in range(3))
    tier.put(_meta("a", a), a)
    tier.put(_meta("b", b), b)
    assert tier.get(_meta("a", a)) == a  # a is now more recent than b
    tier.put(_meta("c", c), c)  # 300 bytes > 250: the least recently used (b) goes
    assert tier.held() == [("a", "1.0"), ("c", "1.0")]
    assert tier.bytes == seen.size == 200
    assert tier.get(_meta("b", b)) is None
    assert (seen.hits, seen.misses) == (1, 1)
    tier.put(_meta("huge", b"x" * 251), b"x" * 251)  # larger than the whole budget: not kept
    assert ("huge", "1.0") not in tier.held()


def test_altered_bytes_on_disk_are_dropped_not_served(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, max_bytes=1 << 20)
    data = b"verified bytes" * 10
    meta = _meta("m", data)
    tier.put(meta, data)
    (tmp_path / "m" / "1.0" / "model.joblib").write_bytes(b"tampered on the node's disk" + data[27:])
    assert tier.get(meta) is None
    assert tier.held() == [] and not (tmp_path / "m" / "1.0").exists()


def test_a_republished_version_is_a_miss(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, max_bytes=1 << 20)
    old, new = b"old" * 10, b"new" * 10
    tier.put(_meta("m", old), old)
    assert tier.get(_meta("m", new)) is None  # the store's metadata names another checksum


def test_a_restart_keeps_the_tier_and_drops_leftovers(tmp_path: Path) -> None:
    data = b"kept" * 10
    DiskTier(tmp_path, max_bytes=1 << 20).put(_meta("m", data), data)
    (tmp_path / ".entry-crashed").mkdir()
    (tmp_path / "half" / "1.0").mkdir(parents=True)  # no metadata.json
    (tmp_path / "half" / "1.0" / "model.joblib").write_bytes(b"x")
    restarted = DiskTier(tmp_path, max_bytes=1 << 20)
    assert restarted.held() == [("m", "1.0")]
    assert restarted.get(_meta("m", data)) == data
    assert restarted.metadata("m", "1.0") == _meta("m", data)
    assert not (tmp_path / ".entry-crashed").exists()
