"""The object-store registry against a real S3-compatible server process (moto's server mode)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.errors import (
    AlreadyPublished,
    InvalidName,
    ModelNotFound,
    RegistryUnavailable,
    VersionNotFound,
)
from coordinator.registry import ObjectStoreRegistry, StoreLocation, open_registry
from coordinator.registry import store as store_module
from coordinator.registry.disk_tier import DiskTier
from node.errors import ChecksumMismatch, ModelLoadError
from node.loader import Loader
from testkit.s3_server import BUCKET, S3Server, ThrottlingProxy, create_bucket, s3_client
from tests.coordinator.conftest import StoreRegistryFn
from tests.helpers import FEATURES, eventually, train_booster


def _artifact(tmp_path: Path, seed: int = 0, suffix: str = "ubj") -> Path:
    path = tmp_path / f"model-{seed}.{suffix}"
    train_booster(seed).save_model(path)
    return path


def _key(*parts: str) -> str:
    return "/".join(("reg", *parts))


def test_location_parsing() -> None:
    loc = StoreLocation.parse("s3://bucket/some/prefix/")
    assert (loc.bucket, loc.prefix, str(loc)) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert loc.key("m", "1.0", "metadata.json") == "some/prefix/m/1.0/metadata.json"
    assert StoreLocation.parse("s3://bucket").key("m") == "m"
    for bad in ("ftp://x/y", "s3:///prefix", "s3://b/a/../c"):
        with pytest.raises(InvalidName):
            StoreLocation.parse(bad)


def test_publish_list_read_round_trip(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    registry = store_registry()
    for version in ("1.9.0", "1.10.0", "2.0.0-beta"):
        registry.publish(_artifact(tmp_path), "churn", version, features=FEATURES, metrics={"f1": 0.9})
    keys = sorted(
        o["Key"] for o in s3_client(os.environ["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=BUCKET)["Contents"]
    )
    assert _key("churn", "1.10.0", "metadata.json") in keys and _key("churn", "1.10.0", "model.ubj") in keys
    assert registry.versions("churn") == ["1.9.0", "1.10.0", "2.0.0b0"]  # PEP 440, not strings
    assert registry.latest("churn") == "1.10.0"  # pre-releases only when asked for
    meta = registry.metadata("churn", "2.0.0-beta")
    assert meta.version == "2.0.0b0" and meta.features == FEATURES
    model = Loader(registry).load("churn", "1.10.0")
    assert model.meta.version == "1.10.0"
    with pytest.raises(VersionNotFound):
        registry.metadata("churn", "3.0")
    with pytest.raises(ModelNotFound):
        registry.versions("nope")
    with pytest.raises(AlreadyPublished):
        registry.publish(_artifact(tmp_path), "churn", "1.9.0")


def test_a_version_without_metadata_is_invisible(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    """Artifact first, metadata.json last: a publisher that stopped in between published nothing."""
    registry = store_registry()
    registry.publish(_artifact(tmp_path), "churn", "1.0.0")
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=BUCKET, Key=_key("churn", "2.0.0", "model.ubj"), Body=b"half published")
    registry.refresh()
    assert registry.versions("churn") == ["1.0.0"]
    assert registry.latest("churn") == "1.0.0"


def test_an_upload_that_never_completes_is_invisible(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    """A multipart upload interrupted mid-way is aborted, and the version never appears."""
    registry = store_registry()
    big = tmp_path / "big.joblib"
    big.write_bytes(os.urandom(store_module.PART_BYTES * 2 + 1000))
    seen: list[int] = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        raise KeyboardInterrupt  # the publisher killed after the first part

    with pytest.raises(KeyboardInterrupt):
        registry.publish(big, "big", "1.0", progress=interrupt)
    assert seen == [store_module.PART_BYTES]
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # aborted
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=_key("big"))
    registry.refresh()
    assert registry.model_types() == []
    # A multipart upload left open by a publisher that died (never aborted) is invisible too.
    client.create_multipart_upload(Bucket=BUCKET, Key=_key("big", "2.0", "model.joblib"))
    registry.refresh()
    assert registry.model_types() == []


def test_large_publish_goes_in_parts_with_progress(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    registry = store_registry()
    big = tmp_path / "big.joblib"
    big.write_bytes(os.urandom(store_module.PART_BYTES * 2 + 1000))
    progress: list[tuple[int, int]] = []
    meta = registry.publish(big, "big", "1.0", progress=lambda d, t: progress.append((d, t)))
    total = big.stat().st_size
    assert [d for d, _ in progress] == [store_module.PART_BYTES, 2 * store_module.PART_BYTES, total]
    assert meta.size_bytes == total
    head = s3_client(os.environ["AWS_ENDPOINT_URL"]).head_object(
        Bucket=BUCKET, Key=_key("big", "1.0", "model.joblib")
    )
    assert "-3" in head["ETag"]  # a multipart object's ETag ends in -<parts>
    assert registry.read_artifact(meta) == big.read_bytes()


@pytest.mark.parametrize("damage", ["tampered", "truncated", "grown"])
def test_a_damaged_object_is_a_load_failure(
    store_registry: StoreRegistryFn, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checksum is checked before anything is deserialized; damaged bytes never reach the tier."""
    registry = store_registry(tier_bytes=1 << 30)
    meta = registry.publish(_artifact(tmp_path), "churn", "1.0.0")
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    key = _key("churn", "1.0.0", "model.ubj")
    good = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    bad = {
        "tampered": good[:100] + bytes([good[100] ^ 0xFF]) + good[101:],
        "truncated": good[: len(good) // 2],
        "grown": good + b"\0" * 10,
    }[damage]
    client.put_object(Bucket=BUCKET, Key=key, Body=bad)
    deserialized: list[object] = []
    monkeypatch.setattr("node.loader.deserialize", lambda *a: deserialized.append(a))
    with pytest.raises(ModelLoadError) as failure:
        Loader(registry, retries=1).load("churn", "1.0.0")
    assert isinstance(failure.value, ChecksumMismatch) or failure.value.reason == "size"
    assert deserialized == []
    assert registry.disk_tier is not None and registry.disk_tier.held() == []
    del meta


def test_a_deleted_object_is_a_load_failure(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    registry = store_registry()
    registry.publish(_artifact(tmp_path), "churn", "1.0.0")
    s3_client(os.environ["AWS_ENDPOINT_URL"]).delete_object(
        Bucket=BUCKET, Key=_key("churn", "1.0.0", "model.ubj")
    )
    with pytest.raises(ModelLoadError, match="missing") as failure:
        Loader(registry, retries=1).load("churn", "1.0.0")
    assert failure.value.reason == "io"


def test_the_disk_tier_serves_reloads_without_the_store(
    store_registry: StoreRegistryFn, tmp_path: Path, s3_server: S3Server
) -> None:
    """Memory-evicted models reload from disk: with the store unreachable, they still load."""
    proxy = ThrottlingProxy(s3_server.port)
    try:
        registry = store_registry(endpoint=proxy.url, tier_bytes=1 << 30)
        registry.publish(_artifact(tmp_path), "churn", "1.0.0")
        registry.publish(_artifact(tmp_path, 1), "other", "1.0.0")
        sleeps: list[float] = []
        loader = Loader(registry, retries=3, sleep=sleeps.append)
        loader.load("churn", "1.0.0")  # now on the tier
        proxy.close()  # the store is unreachable from here on
        started = time.monotonic()
        assert loader.load("churn", "1.0.0").meta.version == "1.0.0"  # metadata cached, artifact on disk
        assert registry.latest("churn") == "1.0.0"  # the listing read earlier still answers
        registry.refresh()
        assert registry.latest("churn") == "1.0.0"  # stale beats down, even after a refresh
        with pytest.raises(ModelLoadError, match="object store s3://models/reg") as failure:
            loader.load("other", "1.0.0")  # never loaded here: needs the store
        assert time.monotonic() - started < 10  # fails within seconds, never hangs
        assert failure.value.reason == "store"
        assert sleeps == []  # not retried by the loader: the store's client already retried once
    finally:
        proxy.close()


def test_a_restarted_node_loads_from_its_tier_while_the_store_is_down(
    store_registry: StoreRegistryFn, tmp_path: Path, s3_server: S3Server
) -> None:
    proxy = ThrottlingProxy(s3_server.port)
    try:
        first = store_registry(endpoint=proxy.url, tier_bytes=1 << 30)
        first.publish(_artifact(tmp_path), "churn", "1.0.0")
        Loader(first).load("churn", "1.0.0")
        proxy.close()
        restarted = store_registry(endpoint=proxy.url, tier_bytes=1 << 30)  # same tier directory
        assert Loader(restarted, retries=1).load("churn", "1.0.0").meta.version == "1.0.0"
    finally:
        proxy.close()


def test_store_killed_mid_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store process dies during a large GET: a load failure within seconds, nothing kept."""
    server = S3Server(tmp_path / "moto.log").start()
    proxy = ThrottlingProxy(server.port, bytes_per_s=2 << 20)
    try:
        create_bucket(server.url)
        for name, value in server.env(proxy.url).items():
            monkeypatch.setenv(name, value)
        registry = open_registry(f"s3://{BUCKET}/reg", disk_tier=_tier(tmp_path))
        big = tmp_path / "big.joblib"
        big.write_bytes(os.urandom(12 << 20))
        meta = registry.publish(big, "big", "1.0")
        threading.Timer(1.0, server.kill).start()  # ~2 MiB into a ~6 s download
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="object store s3://models/reg"):
            registry.read_artifact(meta)
        assert time.monotonic() - started < 10
        assert registry.disk_tier is not None and registry.disk_tier.held() == []
    finally:
        proxy.close()
        server.stop()


def test_a_slow_store_is_bounded(
    store_registry: StoreRegistryFn, tmp_path: Path, s3_server: S3Server
) -> None:
    """Slow but steady downloads succeed; a stalled or trickling store fails within the deadline."""
    proxy = ThrottlingProxy(s3_server.port, bytes_per_s=4 << 20)
    try:
        registry = store_registry(
            endpoint=proxy.url,
            timeouts=store_module.Timeouts(connect_s=1, read_s=1, min_rate_bytes_per_s=1 << 20),
        )
        big = tmp_path / "big.joblib"
        big.write_bytes(os.urandom(2 << 20))
        meta = registry.publish(big, "big", "1.0")
        assert registry.read_artifact(meta) == big.read_bytes()  # ~0.5 s at 4 MiB/s: within 1 s + 2 s

        proxy.bytes_per_s = 256 << 10  # a trickle: 8 s for 2 MiB, beyond the 3 s deadline
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="too slow"):
            registry.read_artifact(meta)
        assert time.monotonic() - started < 6

        proxy.bytes_per_s = 0
        proxy.stall.set()  # responses stop altogether: the read timeout ends it
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="unavailable"):
            registry.read_artifact(meta)
        assert time.monotonic() - started < 6
    finally:
        proxy.stall.clear()
        proxy.close()


def test_the_store_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Down: listings serve stale, loads fail fast. Back on the same address: everything works again."""
    server = S3Server(tmp_path / "moto.log").start()
    try:
        create_bucket(server.url)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        registry = open_registry(f"s3://{BUCKET}/reg", listing_ttl_s=0)
        registry.publish(_artifact(tmp_path), "churn", "1.0.0")
        assert registry.versions("churn") == ["1.0.0"]
        server.kill()
        assert registry.versions("churn") == ["1.0.0"]  # stale listing
        with pytest.raises(RegistryUnavailable, match="object store"):
            registry.publish(_artifact(tmp_path), "churn", "2.0.0")
        server.start()  # same port, empty store (moto keeps nothing): publish anew
        create_bucket(server.url)
        registry.publish(_artifact(tmp_path), "churn", "3.0.0")
        assert registry.versions("churn") == ["3.0.0"]
        assert Loader(registry).load("churn", "3.0.0").meta.version == "3.0.0"
    finally:
        server.stop()


def test_listing_is_cached_and_refreshed(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    clock = [0.0]
    registry = store_registry(listing_ttl_s=30, clock=lambda: clock[0])
    registry.publish(_artifact(tmp_path), "churn", "1.0.0")
    assert registry.latest("churn") == "1.0.0"
    s3_client(os.environ["AWS_ENDPOINT_URL"]).put_object(
        Bucket=BUCKET,
        Key=_key("churn", "1.1.0", "metadata.json"),
        Body=json.dumps({**registry.metadata("churn", "1.0.0").to_dict(), "version": "1.1.0"}),
    )
    assert registry.latest("churn") == "1.0.0"  # cached: no store call
    clock[0] = 31.0
    assert registry.latest("churn") == "1.1.0"  # the timer
    registry.publish(_artifact(tmp_path), "churn", "1.2.0")
    assert registry.latest("churn") == "1.2.0"  # publishing refreshes
    other = store_registry(listing_ttl_s=30, clock=lambda: clock[0])
    assert other.latest("churn") == "1.2.0"
    registry.publish(_artifact(tmp_path), "churn", "1.3.0")
    assert other.latest("churn") == "1.2.0"
    other.refresh("churn")  # what a reload or pin change does (node.resolver.target)
    assert other.latest("churn") == "1.3.0"


def test_forced_republish_replaces_and_the_tier_follows(
    store_registry: StoreRegistryFn, tmp_path: Path
) -> None:
    registry = store_registry(tier_bytes=1 << 30)
    first = registry.publish(_artifact(tmp_path, 1), "churn", "1.0.0")
    assert Loader(registry).load("churn", "1.0.0").meta.sha256 == first.sha256
    second = registry.publish(_artifact(tmp_path, 2), "churn", "1.0.0", force=True)
    assert second.sha256 != first.sha256
    registry.refresh("churn")
    assert Loader(registry).load("churn", "1.0.0").meta.sha256 == second.sha256


def _tier(tmp_path: Path) -> DiskTier:
    return DiskTier(tmp_path / "tier", 1 << 30)


class CountingObserver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def store_request(self, operation: str, outcome: str, seconds: float) -> None:
        self.requests.append((operation, outcome))

    def store_bytes(self, direction: str, nbytes: int) -> None:
        pass


def test_unknown_versions_cost_no_store_call_each(store_registry: StoreRegistryFn, tmp_path: Path) -> None:
    """A flood of requests for versions that do not exist reads the listing at most once a second."""
    clock = [0.0]
    seen = CountingObserver()
    registry = store_registry(clock=lambda: clock[0], observer=seen)
    publisher = store_registry()
    publisher.publish(_artifact(tmp_path), "churn", "1.0.0")
    registry.metadata("churn", "1.0.0")
    seen.requests.clear()
    clock[0] = 5.0
    for _ in range(20):
        with pytest.raises(VersionNotFound):
            registry.metadata("churn", "9.9")
        with pytest.raises(ModelNotFound):
            registry.metadata("nope", "1.0")
    assert seen.requests == [("list", "ok")]  # one re-read of the listing, no GET per request
    publisher.publish(_artifact(tmp_path), "churn", "2.0.0")
    with pytest.raises(VersionNotFound):
        registry.metadata("churn", "2.0.0")  # the listing was read this very second
    clock[0] = 6.5  # within the 30 s TTL, but a miss re-reads a listing older than a second
    assert registry.metadata("churn", "2.0.0").version == "2.0.0"
    assert seen.requests[-2:] == [("list", "ok"), ("get", "ok")]


class _Requests:
    """A store observer that records each request made."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def store_request(self, operation: str, outcome: str, seconds: float) -> None:
        self.made.append((operation, outcome))

    def store_bytes(self, direction: str, nbytes: int) -> None:
        pass


def test_a_silent_store_fails_the_next_calls_at_once_and_is_tried_again_later(
    store_registry: StoreRegistryFn, tmp_path: Path, s3_server: S3Server
) -> None:
    """A store that stops answering (dropped packets) costs one timeout, not one per call of a load."""
    proxy = ThrottlingProxy(s3_server.port)
    requests = _Requests()
    try:
        registry = store_registry(
            endpoint=proxy.url,
            timeouts=store_module.Timeouts(connect_s=1, read_s=1, silent_cooldown_s=3),
            observer=requests,
        )
        meta = registry.publish(_artifact(tmp_path), "churn", "1.0.0")
        proxy.stall.set()
        with pytest.raises(RegistryUnavailable, match="no answer in time"):
            registry.read_artifact(meta)
        made = len(requests.made)
        with pytest.raises(RegistryUnavailable, match="trying again in"):
            registry.read_artifact(meta)
        assert len(requests.made) == made  # no request: it failed at once
        proxy.stall.clear()
        assert eventually(lambda: _reads(registry, meta), 15)  # after the cool-down, it is asked again
    finally:
        proxy.stall.clear()
        proxy.close()


def _reads(registry: ObjectStoreRegistry, meta: Any) -> bool:
    try:
        return bool(registry.read_artifact(meta))
    except RegistryUnavailable:
        return False
