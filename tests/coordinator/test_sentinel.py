"""Redis Sentinel: the URL form, and a real failover (primary, replica, 3 Sentinels, 2 nodes)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.control import Control
from coordinator.errors import ClusterUnavailable
from coordinator.redis_server import RedisServer, SentinelServer, sentinel_url
from coordinator.redis_url import RedisTarget, SentinelRedis, parse_redis_url
from coordinator.registry import Registry
from coordinator.wire import Outcome
from tests.helpers import NodeProcess, PublishFn

MASTER = "modelcache"
ROW = [0.1, 0.2, 0.3, 0.4]


def test_sentinel_url_forms() -> None:
    t = parse_redis_url("redis+sentinel://a:26379,b:26380,c/mymaster/2")
    assert t.sentinels == (("a", 26379), ("b", 26380), ("c", 26379))
    assert (t.master, t.db, t.password, t.is_sentinel) == ("mymaster", 2, None, True)
    t = parse_redis_url("redis+sentinel://:s%40cret@h:1/m?sentinel_password=x")
    assert (t.master, t.db, t.password, t.sentinel_password) == ("m", 0, "s@cret", "x")
    assert "s@cret" not in t.describe() and "via Sentinel h:1" in t.describe()
    plain = parse_redis_url("redis://:pw@localhost:6379/0")
    assert (
        plain == RedisTarget("redis://:pw@localhost:6379/0")
        and plain.describe() == "Redis at localhost:6379/0"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:1", "expected redis\\+sentinel://"),
        ("redis+sentinel:///m/0", "expected redis\\+sentinel://"),
        ("redis+sentinel://h:x/m/0", "port 'x' is not a number"),
        ("redis+sentinel://h:1/m/zero", "database 'zero' is not a number"),
        ("localhost:6379", "no scheme"),
    ],
)
def test_bad_sentinel_urls_say_what_is_expected(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_redis_url(url)


def test_no_sentinel_answering_is_cluster_unavailable(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    control = Control.connect(f"redis+sentinel://127.0.0.1:{_closed_port()}/{MASTER}/0", registry)
    try:
        assert isinstance(control.state.link.client, SentinelRedis)
        with pytest.raises(ClusterUnavailable, match=r"via Sentinel 127\.0\.0\.1:\d+ is unreachable"):
            control.pin("m", "1.0")
    finally:
        control.close()


def _closed_port() -> int:
    from coordinator.processes import free_port

    return free_port()


# -- a real failover --------------------------------------------------------------------------


@pytest.fixture
def sentinel_group() -> Iterator[tuple[RedisServer, RedisServer, list[SentinelServer]]]:
    """A primary, one replica and three Sentinels (quorum 2), all stopped by PID afterwards."""
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(RedisServer())
        replica = stack.enter_context(RedisServer(args=["--replicaof", "127.0.0.1", str(primary.port)]))
        _until(lambda: _info(replica.port, "master_link_status") == "up", "replica in sync", 15)
        sentinels = []
        for _ in range(3):
            s = SentinelServer(primary.port, MASTER, down_after_ms=500, failover_timeout_ms=2000)
            stack.callback(s.stop)
            sentinels.append(s.start())
        # A failover needs each Sentinel to know the replica and a quorum of its peers.
        for s in sentinels:
            _until(lambda s=s: _sentinel_view(s) == (1, 2), f"sentinel {s.address} sees the group", 20)
        yield primary, replica, sentinels


def _info(port: int, field: str) -> str:
    with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
        return str(c.info("replication").get(field))


def _sentinel_view(s: SentinelServer) -> tuple[int, int]:
    with redis.Redis(port=s.port, socket_timeout=1, decode_responses=True) as c:
        return len(c.sentinel_slaves(MASTER)), len(c.sentinel_sentinels(MASTER))


def _until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError, ClusterUnavailable, httpx.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Load:
    """Predictions against every node in a background thread, bounded in requests and time."""

    def __init__(self, urls: list[str], max_requests: int = 5000, max_s: float = 60) -> None:
        self.urls, self.max_requests, self.max_s = urls, max_requests, max_s
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self._stop.is_set() and i < self.max_requests and time.monotonic() < deadline:
                url = self.urls[i % len(self.urls)]
                i += 1
                try:
                    r = client.post(f"{url}/api/v1/predict", json={"model_type": "m", "features": ROW})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{url}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
                time.sleep(0.005)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _serving(url: str) -> str:
    r = httpx.post(f"{url}/api/v1/predict", json={"model_type": "m", "features": ROW}, timeout=5)
    return str(r.json()["version"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_failover_loses_no_acknowledged_pin_and_nodes_follow_the_new_primary(
    sentinel_group: tuple[RedisServer, RedisServer, list[SentinelServer]],
    cluster: Callable[..., list[NodeProcess]],
    registry: Registry,
    publish: PublishFn,
    prefix: str,
) -> None:
    primary, replica, sentinels = sentinel_group
    for version in ("1.0", "2.0", "3.0"):
        publish("m", version, features=("a", "b", "c", "d"))
    url = sentinel_url(sentinels, MASTER)
    nodes = cluster(2, redis_url=url)
    urls = [n.url for n in nodes]
    control = Control.connect(url, registry, prefix, origin="test")
    try:
        first = control.pin("m", "1.0")
        assert first.replicated is True  # WAIT 1: a replica has it before the call returns
        assert [r.outcome for r in control.members.wait_for_acks(first, timeout_s=15)] == [Outcome.OK] * 2

        with Load(urls) as load:
            _until(lambda: load.ok >= 20, "predictions flowing", 20)
            acknowledged = control.pin("m", "2.0")
            assert acknowledged.replicated is True
            # Kill the primary the moment the pin is acknowledged: no time to replicate "later".
            assert primary.proc is not None
            primary.proc.kill()
            killed = time.monotonic()
            with pytest.raises(ClusterUnavailable):  # admin calls fail fast until a primary is known
                control.pin("m", "3.0")

            accepted: list[float] = []

            def pin_after_failover() -> bool:
                assert control.state.read().pins.get("m") == "2.0", (
                    "an acknowledged pin was lost in the failover"
                )
                after = control.pin("m", "3.0")
                accepted.append(time.monotonic() - killed)
                assert after.replicated is None  # the old primary is gone: no replica left to wait for
                return True

            _until(pin_after_failover, "a pin accepted by the new primary", 60)
            assert _info(replica.port, "role") == "master"
            # Without restarting anything, both nodes follow the new primary and apply the new pin.
            for node_url in urls:
                _until(lambda u=node_url: _serving(u) == "3.0", f"{node_url} serving 3.0", 60)
            _until(
                lambda: len(control.members.nodes()) == 2, "both nodes heartbeating on the new primary", 30
            )
        assert load.failures == [], load.failures[:5]
        assert load.ok > 20
    finally:
        control.close()
    result = {
        "kill_to_first_accepted_pin_s": round(accepted[0], 3),
        "down_after_ms": 500,
        "failover_timeout_ms": 2000,
        "predictions_ok": load.ok,
        "predictions_failed": len(load.failures),
        "nodes": 2,
    }
    print("failover:", json.dumps(result))
    out = os.environ.get("MODELCACHE_FAILOVER_OUT")
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
