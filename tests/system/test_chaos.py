"""Chaos: a real 3-node cluster under load while Redis and the registry misbehave.

While clients predict without pause, the test kills every pub/sub connection,
publishes junk on the events channel, restarts Redis empty, publishes a corrupt
version, writes a garbage pin straight into Redis and starts a node into that
state. Every change must still reach every node (acknowledged as exactly that
change), and not one prediction may fail.

The reconcile interval is long on purpose: convergence has to come from events
and reconnects, so a subscriber that died on junk would show as a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.control import Control
from coordinator.keys import Keys
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, corrupt, eventually, metric

ROW = [0.1, 0.2, 0.3, 0.4]
ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
JUNK_EVENTS = [
    b"\xff\xfe\x00not utf-8",
    b"not json at all",
    b"{}",
    b'{"kind": 5, "model_type": ["x"], "seq": "NaN"}',
    b"[1, 2, 3]",
    b"x" * 1_000_000,
]


@dataclass
class Load:
    """Clients predicting round-robin across nodes until stopped (bounded in count and time)."""

    nodes: list[NodeProcess]
    max_requests: int = 50_000
    max_seconds: float = 100.0
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 2) -> Load:
        for i in range(clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, offset: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            i = offset
            while not self._stop.is_set() and self.sent < self.max_requests and time.monotonic() < deadline:
                node = self.nodes[i % len(self.nodes)]
                model_type = "m" if i % 3 else "n"
                try:
                    r = client.post(f"{node.url}/api/v1/models/{model_type}/predict", json={"features": ROW})
                    if r.status_code != 200:
                        self.failures.append(f"{node.url} {model_type}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{node.url} {model_type}: {type(exc).__name__}: {exc}")
                self.sent += 1
                i += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def serving(node: NodeProcess, model_type: str = "m") -> str:
    r = httpx.post(f"{node.url}/api/v1/models/{model_type}/predict", json={"features": ROW}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["version"]


def admin_reload(node: NodeProcess, model_type: str) -> dict:
    r = httpx.post(
        f"{node.url}/api/v1/models/reload",
        json={"model_type": model_type, "scope": "cluster", "wait": True, "timeout_s": 15},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def all_connected(nodes: list[NodeProcess]) -> bool:
    return all(metric(n.url, "modelcache_redis_connected") == 1 for n in nodes)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cluster_converges_and_no_prediction_fails_under_chaos(
    cluster: Callable[..., list[NodeProcess]],
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    prefix: str,
    tmp_path: Path,
) -> None:
    server = RedisServer(data_dir=tmp_path / "redis", persist=False).start()
    keys = Keys(prefix)
    try:
        publish("m", "1.0")
        publish("n", "1.0")
        nodes = cluster(3, redis_url=server.url, MODELCACHE_RECONCILE_INTERVAL_S="30")
        for node in nodes:
            assert serving(node) == "1.0" and serving(node, "n") == "1.0"
        load = Load(nodes).start()
        r = redis.Redis.from_url(server.url)

        # 1. Every subscriber loses its connection just before a change.
        assert r.client_kill_filter(_type="pubsub") >= 3
        publish("m", "2.0")
        answer = admin_reload(nodes[0], "m")
        assert answer["ok"], answer
        assert {(a["outcome"], a["version"]) for a in answer["acks"]} == {("ok", "2.0")}
        assert [serving(n) for n in nodes] == ["2.0"] * 3

        # 2. Junk on the events channel: ignored, and the next change still travels by event.
        for junk in JUNK_EVENTS:
            r.publish(keys.events, junk)
        publish("m", "2.1")
        answer = admin_reload(nodes[1], "m")
        assert answer["ok"], answer
        assert [serving(n) for n in nodes] == ["2.1"] * 3

        # 3. Redis comes back empty: the counters restart, yet the next reload is not lost
        # and its acknowledgements are of this change, not the ones from before the reset.
        # Two changes land before the nodes are back, so the generation they see again
        # (2) is one they applied before the reset: only an epoch tells the two apart.
        publish("m", "3.0")
        server.stop()
        server.start()
        operator = Control.connect(server.url, registry, prefix)
        try:
            operator.reload("m", None)
            operator.reload("m", None)
        finally:
            operator.close()
        assert eventually(lambda: all_connected(nodes), timeout=20)
        assert eventually(lambda: [serving(n) for n in nodes] == ["3.0"] * 3, timeout=10)
        answer = admin_reload(nodes[2], "m")
        assert answer["ok"], answer
        assert len(answer["acks"]) == 3
        assert {(a["outcome"], a["version"]) for a in answer["acks"]} == {("ok", "3.0")}
        assert [serving(n) for n in nodes] == ["3.0"] * 3

        # 4. A corrupt newest version: every node reports it failed and keeps serving 3.0.
        corrupt(registry, publish("m", "4.0"))
        answer = admin_reload(nodes[0], "m")
        assert not answer["ok"]
        assert {a["outcome"] for a in answer["acks"]} == {"failed"}
        assert [serving(n) for n in nodes] == ["3.0"] * 3

        # 5. Garbage written straight into the pins: nodes keep serving, and a node
        # started into that state still becomes ready.
        r.hset(keys.pins, "n", "not a version!!")
        r.hset(keys.pins, "../etc", "1.0")
        r.publish(keys.events, b'{"kind": "pin"}')
        late = node_process(
            registry.root,
            MODELCACHE_REDIS_URL=server.url,
            MODELCACHE_REDIS_PREFIX=prefix,
            MODELCACHE_ADMIN_TOKEN=CLUSTER_TOKEN,
            MODELCACHE_HEARTBEAT_S="0.3",
            MODELCACHE_LOAD_RETRIES="1",
        )
        assert serving(late, "n") == "1.0"
        assert [serving(n, "n") for n in nodes] == ["1.0"] * 3

        load.stop()
        assert load.failures == [], load.failures[:10]
        assert load.sent > 100
        assert all(httpx.get(f"{n.url}/readyz", timeout=5).status_code == 200 for n in [*nodes, late])
        assert all_connected([*nodes, late])
    finally:
        server.stop()
