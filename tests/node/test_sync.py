"""The cluster end to end: real redis-server, three real node processes on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from coordinator.control import Control
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Outcome
from node.app import build_node
from node.background import Backoff
from node.settings import NodeSettings
from node.sync import ClusterSync
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, corrupt, eventually, metric, wait_http

ROW = [0.1, 0.2, 0.3, 0.4]
ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
Cluster = Callable[..., list[NodeProcess]]
LocalSync = Callable[..., ClusterSync]


@pytest.fixture
def local_sync(registry: Registry, redis_server: RedisServer, prefix: str) -> Iterator[LocalSync]:
    """local_sync(node_id, start=False, **settings): a ClusterSync in this process, on real Redis.

    In-process nodes let a test drive `_reconcile` step by step and read the node's metrics;
    its background threads run only when `start=True`. All are stopped after the test.
    """
    made: list[tuple[ClusterSync, bool]] = []

    def _make(node_id: str = "n1", start: bool = False, **overrides: object) -> ClusterSync:
        defaults: dict[str, object] = {
            "reconcile_interval_s": 60,  # only events (or an explicit call) make it reconcile
            "heartbeat_s": 0.3,
            "load_retries": 1,
        }
        settings = NodeSettings(
            registry=registry.root,
            redis_url=redis_server.url,
            redis_prefix=prefix,
            node_id=node_id,
            **{**defaults, **overrides},  # type: ignore[arg-type]
        )
        sync = build_node(settings).sync
        assert isinstance(sync, ClusterSync)
        made.append((sync, start))
        if start:
            asyncio.run(sync.start())
        return sync

    yield _make
    for sync, started in made:
        if started:
            asyncio.run(sync.stop())
        else:
            sync.link.close()


def served(node: NodeProcess, model_type: str = "m") -> dict:
    r = httpx.post(f"{node.url}/api/v1/predict", json={"model_type": model_type, "features": ROW}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def warm_cluster(cluster: Cluster, publish: PublishFn, *versions: str) -> list[NodeProcess]:
    """Publish `m` at `versions`, start three nodes, and have each serve `m` once (so it is cached)."""
    for version in versions:
        publish("m", version)
    nodes = cluster(3)
    for n in nodes:
        served(n)
    return nodes


def cli(registry: Registry, redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    where = [] if args[0] == "status" else ["--registry", str(registry.root)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            *args,
            *where,
            "--redis-url",
            redis_url,
            "--redis-prefix",
            prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pin_via_cli_and_http_reaches_every_node(
    cluster: Cluster, registry: Registry, publish: PublishFn, redis_server: RedisServer, prefix: str
) -> None:
    publish("m", "1.0")
    publish("m", "2.0")
    nodes = cluster(3)
    assert {served(n)["version"] for n in nodes} == {"2.0"}

    out = cli(registry, redis_server.url, prefix, "pin", "m", "1.0", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["acks"]
    assert len(rows) == 3 and {(r["outcome"], r["version"]) for r in rows} == {("ok", "1.0")}
    assert all(r["propagation_ms"] is not None for r in rows)
    assert [(served(n)["version"], served(n)["cached"]) for n in nodes] == [("1.0", True)] * 3

    r = httpx.put(
        f"{nodes[1].url}/api/v1/pins/m", json={"version": "2.0", "wait": True}, headers=ADMIN, timeout=30
    )
    assert r.status_code == 200 and r.json()["ok"] is True
    assert sorted(a["node_id"] for a in r.json()["acks"]) == sorted(f"node-{n.port}" for n in nodes)
    assert {served(n)["version"] for n in nodes} == {"2.0"}
    assert httpx.get(f"{nodes[2].url}/api/v1/pins").json() == {"pins": {"m": "2.0"}}

    r = httpx.delete(f"{nodes[0].url}/api/v1/pins/m", params={"wait": True}, headers=ADMIN, timeout=30)
    assert r.status_code == 200 and len(r.json()["acks"]) == 3
    view = httpx.get(f"{nodes[0].url}/api/v1/cluster").json()
    assert view["pins"] == {} and len(view["nodes"]) == 3
    assert {tuple(map(tuple, (c.values() for c in n["cached"]))) for n in view["nodes"]} == {(("m", "2.0"),)}

    missing = cli(registry, redis_server.url, prefix, "pin", "m", "7.0")
    assert missing.returncode == 1 and "no version '7.0'" in missing.stderr
    r = httpx.put(f"{nodes[0].url}/api/v1/pins/m", json={"version": "7.0"}, headers=ADMIN)
    assert r.status_code == 404


def test_reload_after_publishing_reaches_every_node(
    cluster: Cluster, registry: Registry, publish: PublishFn, redis_server: RedisServer, prefix: str
) -> None:
    nodes = warm_cluster(cluster, publish, "1.0")
    publish("m", "1.1")
    out = cli(registry, redis_server.url, prefix, "reload", "m", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["acks"]
    assert [(r["outcome"], r["version"]) for r in rows] == [("ok", "1.1")] * 3
    assert [(served(n)["version"], served(n)["cached"]) for n in nodes] == [("1.1", True)] * 3

    publish("m", "1.2")
    r = httpx.post(
        f"{nodes[2].url}/api/v1/models/reload",
        json={"scope": "cluster", "wait": True},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["ok"] and len(r.json()["acks"]) == 3
    assert {served(n)["version"] for n in nodes} == {"1.2"}
    assert all(metric(n.url, "modelcache_reloads_total", source="cluster", outcome="ok") >= 2 for n in nodes)
    assert all(metric(n.url, "modelcache_reload_propagation_seconds_count") >= 2 for n in nodes)


def test_lost_events_converge_by_reconcile(
    cluster: Cluster,
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    control: Control,
    link: Link,
) -> None:
    """Invariant 3: with the pub/sub connections killed, and with no event at all, nodes converge."""
    nodes = warm_cluster(cluster, publish, "1.0", "2.0")
    admin = redis.Redis.from_url(redis_server.url)
    assert admin.client_kill_filter(_type="pubsub") >= 3
    control.pin("m", "1.0")
    assert eventually(lambda: all(served(n)["version"] == "1.0" for n in nodes), timeout=5)

    # A change written to the keys with no event at all: only the periodic reconcile can see it.
    k = link.keys
    pipe = admin.pipeline(transaction=True)
    pipe.hset(k.pins, "m", "2.0").hincrby(k.generations, "m", 1).incr(k.seq)
    pipe.hset(
        k.changes,
        "m",
        json.dumps({"kind": "pin", "model_type": "m", "version": "2.0", "seq": 2, "ts": time.time()}),
    )
    pipe.execute()
    admin.close()
    assert eventually(lambda: all(served(n)["version"] == "2.0" for n in nodes), timeout=5)
    assert all(metric(n.url, "modelcache_redis_connected") == 1 for n in nodes)


def test_corrupt_version_pinned_everywhere_keeps_the_previous(
    cluster: Cluster, registry: Registry, publish: PublishFn, redis_server: RedisServer, prefix: str
) -> None:
    nodes = warm_cluster(cluster, publish, "1.0")
    corrupt(registry, publish("m", "1.1"))
    out = cli(registry, redis_server.url, prefix, "pin", "m", "1.1", "--wait", "--json")
    assert out.returncode == 1
    rows = json.loads(out.stdout)["acks"]
    assert len(rows) == 3
    for row in rows:
        assert row["outcome"] == "failed" and row["version"] == "1.0"
        assert "sha256" in row["detail"] and "still serving 1.0" in row["detail"]
    assert "3 of 3 node(s) failed" in out.stderr
    assert [(served(n)["version"], served(n)["cached"]) for n in nodes] == [("1.0", True)] * 3
    assert metric(nodes[0].url, "modelcache_pinned_version_info", model_type="m", version="1.1") == 1
    assert metric(nodes[0].url, "modelcache_served_version_info", model_type="m", version="1.0") == 1


def test_alternating_pins_under_load_fail_no_request(
    cluster: Cluster,
    registry: Registry,
    publish: PublishFn,
    members: Membership,
    control: Control,
) -> None:
    publish("m", "1.0")
    publish("m", "2.0", rounds=30)
    nodes = cluster(3)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def load(node: NodeProcess) -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(1500):  # bounded
                if stop.is_set():
                    return
                r = c.post(f"{node.url}/api/v1/predict", json={"model_type": "m", "features": ROW})
                results.append((r.status_code, r.json().get("version", r.text)))

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(load, nodes[i % 3]) for i in range(6)]
        for i in range(10):
            before = len(results)
            change = control.pin("m", ("1.0", "2.0")[i % 2])
            rows = members.wait_for_acks(change, timeout_s=10)
            assert [r.outcome for r in rows] == ["ok"] * 3
            assert eventually(lambda n=before: len(results) >= n + 20)  # requests keep flowing across pins
        stop.set()
        for f in futures:
            f.result(60)
    assert len(results) >= 200
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    assert {v for _, v in results} <= {"1.0", "2.0"}


def test_redis_outage_loses_no_prediction_and_resynchronises(
    cluster: Cluster,
    registry: Registry,
    publish: PublishFn,
    tmp_path,
    prefix: str,
) -> None:
    """Invariant 4: Redis down, predictions go on; back up, state converges without a restart."""
    publish("m", "1.0")
    publish("m", "2.0")
    server = RedisServer(data_dir=tmp_path / "redis", persist=True).start()
    control = Control.connect(server.url, registry, prefix)
    members = control.members
    stop = threading.Event()
    results: list[int] = []
    nodes: list[NodeProcess] = []

    def load() -> None:
        with httpx.Client(timeout=10) as c:
            for i in range(20000):  # bounded; stopped explicitly below
                if stop.is_set():
                    return
                url = f"{nodes[i % 3].url}/api/v1/predict"
                results.append(c.post(url, json={"model_type": "m", "features": ROW}).status_code)

    thread = threading.Thread(target=load)
    try:
        nodes.extend(cluster(3, redis_url=server.url))
        members.wait_for_acks(control.pin("m", "1.0"), timeout_s=10)
        thread.start()
        server.stop()
        assert eventually(lambda: all(metric(n.url, "modelcache_redis_connected") == 0 for n in nodes))
        r = httpx.put(f"{nodes[0].url}/api/v1/pins/m", json={"version": "2.0"}, headers=ADMIN, timeout=30)
        assert r.status_code == 503 and r.json()["code"] == "cluster_unavailable"
        out = cli(registry, server.url, prefix, "pin", "m", "2.0")
        assert out.returncode == 3 and "unreachable" in out.stderr
        during = len(results)
        assert eventually(lambda: len(results) > during + 50)  # still serving while Redis is away

        server.start()
        assert eventually(lambda: all(metric(n.url, "modelcache_redis_connected") == 1 for n in nodes), 15)
        assert eventually(lambda: len(members.nodes()) == 3)  # heartbeats resumed
        rows = members.wait_for_acks(control.pin("m", "2.0"), timeout_s=10)
        assert [r.outcome for r in rows] == ["ok"] * 3
        assert {served(n)["version"] for n in nodes} == {"2.0"}
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(30)
        control.close()
        server.stop()
    assert len(results) > 50 and set(results) == {200}


def test_killed_node_leaves_and_a_restarted_one_warms_up(
    cluster: Cluster,
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    prefix: str,
    state: ClusterState,
    control: Control,
    members: Membership,
) -> None:
    """Invariant 7: kill a node; it drops out; restarted, it warms pinned and popular models before ready."""
    publish("m", "1.0")
    publish("m", "2.0")
    publish("hot", "1.0")
    nodes = cluster(3)
    members.wait_for_acks(control.pin("m", "1.0"), timeout_s=10)
    for _ in range(5):
        served(nodes[0], "hot")  # the cluster's most requested model, recorded by heartbeats
    assert eventually(lambda: state.popular(1) == ["hot"])
    victim = nodes[2]
    victim.kill()

    def status_ids() -> set[str]:
        out = cli(registry, redis_server.url, prefix, "status", "--json")
        return {n["node_id"] for n in json.loads(out.stdout)["nodes"]}

    assert eventually(lambda: f"node-{victim.port}" not in status_ids(), timeout=10)
    assert len(status_ids()) == 2

    victim.env["MODELCACHE_WARMUP_POPULAR"] = "true"
    victim.start(wait=False)
    wait_http(f"{victim.url}/readyz", victim.proc)
    stats = httpx.get(f"{victim.url}/api/v1/cache/stats").json()
    # Warm before ready: the pinned version, and (configured) the most requested model.
    assert sorted((m["model_type"], m["version"]) for m in stats["models"]) == [("hot", "1.0"), ("m", "1.0")]
    body = served(victim)
    assert (body["version"], body["cached"]) == ("1.0", True)
    assert eventually(lambda: f"node-{victim.port}" in status_ids(), timeout=10)


def test_redis_losing_its_data_does_not_hide_the_next_reload(
    cluster: Cluster,
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    control: Control,
    members: Membership,
    link: Link,
) -> None:
    """FLUSHALL restarts seq and generations; the next reload must still reach every node, and
    wait must report acks of this change, not a node's old ack that happens to carry the same seq."""
    nodes = warm_cluster(cluster, publish, "1.0")
    publish("m", "1.1")
    before = control.reload("m", None)
    assert [r.outcome for r in members.wait_for_acks(before, timeout_s=10)] == [Outcome.OK] * 3
    assert {served(n)["version"] for n in nodes} == {"1.1"}

    link.client.flushall()
    assert eventually(lambda: len(members.nodes()) == 3)  # heartbeats come back on their own
    publish("m", "1.2")
    after = control.reload("m", None)
    assert (after.seq, after.generation) == (before.seq, before.generation)  # the counters restarted
    rows = members.wait_for_acks(after, timeout_s=10)
    assert [(r.outcome, r.version) for r in rows] == [(Outcome.OK, "1.2")] * 3
    assert [(served(n)["version"], served(n)["cached"]) for n in nodes] == [("1.2", True)] * 3


def test_a_node_started_with_garbage_pins_becomes_ready(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    prefix: str,
    control: Control,
    members: Membership,
    link: Link,
) -> None:
    publish("churn", "1.0")
    publish("m", "1.0")
    publish("m", "2.0")
    control.pin("m", "1.0")
    link.client.hset(link.keys.pins, mapping={"churn": "not a version!!", "../etc": "1.0"})
    node = node_process(
        registry.root,
        wait=False,
        MODELCACHE_REDIS_URL=redis_server.url,
        MODELCACHE_REDIS_PREFIX=prefix,
        MODELCACHE_HEARTBEAT_S="0.3",
    )
    wait_http(f"{node.url}/readyz", node.proc, timeout=20)  # warm-up did not die on the junk
    assert served(node)["version"] == "1.0"  # the good pin still applies
    [ack] = members.acks([f"node-{node.port}"]).values()
    assert ack.outcomes["churn"].outcome is Outcome.FAILED
    assert "not a PEP 440 version" in ack.outcomes["churn"].detail
    assert ack.outcomes["../etc"].outcome is Outcome.FAILED


def test_one_bad_model_fails_alone_and_the_ack_is_still_written(
    local_sync: LocalSync,
    registry: Registry,
    publish: PublishFn,
    state: ClusterState,
    control: Control,
    members: Membership,
) -> None:
    publish("a", "1.0")
    publish("b", "1.0")
    sync = local_sync()
    sync.warm(lambda wanted: wanted, [])  # first contact: adopt the state, load nothing
    broken = publish("a", "1.1")
    (registry.root / "a" / broken.version / "metadata.json").write_text("{not json")
    publish("b", "1.1")
    bad = control.reload("a", None)
    good = control.reload("b", None)
    sync._reconcile()  # both changes in one pass; "a" comes first
    [row] = members.wait_for_acks(bad, timeout_s=0.5)
    assert row.outcome is Outcome.FAILED and "not valid JSON" in row.detail
    [row] = members.wait_for_acks(good, timeout_s=0.5)
    assert (row.outcome, row.version) == (Outcome.OK, "1.1")
    assert sync.reconciler.reloads.served("b") == "1.1"
    # Later changes are acknowledged too: the bad model does not wedge the loop.
    later = control.reload("b", None)
    sync._reconcile()
    assert [r.outcome for r in members.wait_for_acks(later, timeout_s=0.5)] == [Outcome.OK]


def test_junk_on_the_events_channel_is_ignored_and_the_subscriber_lives(
    local_sync: LocalSync,
    registry: Registry,
    publish: PublishFn,
    control: Control,
    members: Membership,
    link: Link,
) -> None:
    publish("m", "1.0")
    publish("m", "2.0")
    sync = local_sync(start=True)
    assert eventually(lambda: metric_value(sync, "modelcache_redis_connected") == 1)
    for junk in (
        b"\xff\xfe\x00\x81",
        b"not json",
        b"x" * 300_000,
        b'{"kind": "pin"}',
        b"[1, 2]",
        b'{"kind": "pin", "model_type": "m", "version": "2.0", "seq": 1, "ts": 1, "epoch": 5}',
    ):
        link.client.publish(link.keys.events, junk)
    change = control.pin("m", "2.0")
    # With a 60 s reconcile interval only a live subscriber can bring this in time.
    rows = members.wait_for_acks(change, timeout_s=5)
    assert [(r.outcome, r.version) for r in rows] == [(Outcome.OK, "2.0")]
    assert all(t.is_alive() for t in sync._threads)
    assert sync.health().healthy and metric_value(sync, "modelcache_background_errors_total") is None


def test_background_threads_survive_unexpected_errors_and_report_them(
    local_sync: LocalSync,
    registry: Registry,
    publish: PublishFn,
    state: ClusterState,
    control: Control,
    members: Membership,
) -> None:
    """A bug-class error (not a Redis error) at the top of the loop: counted, visible, survived.

    The real server cannot raise a non-Redis error from a read any more (junk is validated),
    so the failure is injected into the state reader.
    """
    publish("m", "1.0")
    publish("m", "2.0")
    sync = local_sync()
    real_read, broken = sync.state.read, threading.Event()
    broken.set()

    def flaky_read():  # type: ignore[no-untyped-def]
        if broken.is_set():
            raise RuntimeError("boom")
        return real_read()

    sync.state.read = flaky_read  # type: ignore[method-assign]
    asyncio.run(sync.start())
    try:
        assert eventually(lambda: not sync.health().healthy, timeout=10), (sync.health(), sync._health)
        assert "loop: 3 errors in a row" in sync.health().problems[0]
        assert metric_value(sync, "modelcache_background_errors_total", thread="loop") >= 3
        assert all(t.is_alive() for t in sync._threads)
        broken.clear()
        change = control.pin("m", "2.0")  # the loop goes on once reads work again
        assert [r.outcome for r in members.wait_for_acks(change, timeout_s=10)] == [Outcome.OK]
        assert eventually(lambda: sync.health().healthy)
        assert all(t.is_alive() for t in sync._threads)
    finally:
        asyncio.run(sync.stop())


def test_backoff_is_capped_decorrelated_jitter() -> None:
    values = iter([0.0, 1.0, 1.0, 1.0, 1.0, 0.25, 1.0])
    b = Backoff(base=0.1, cap=2.0, rand=lambda: next(values))
    assert [round(b.next(), 6) for _ in range(6)] == [
        0.1,
        0.3,
        0.9,
        2.0,
        2.0,
        1.575,
    ]  # 0.1 + 0.25 * (3 * 2.0 - 0.1)
    b.reset()
    assert round(b.next(), 6) == 0.3  # back to the base: next in [0.1, 0.3]
    # Two nodes that lost Redis together do not retry together.
    import random

    fleet = [Backoff(rand=random.Random(seed).random) for seed in range(5)]
    first = [b.next() for b in fleet]
    assert len(set(first)) == 5 and all(0.1 <= d <= 0.3 for d in first)
    assert all(0.1 <= Backoff(rand=random.Random(9).random).next() <= 5.0 for _ in range(100))


def metric_value(sync: ClusterSync, name: str, **labels: str) -> float | None:
    return sync.metrics.registry.get_sample_value(name, labels)


def test_an_event_landing_as_a_heartbeat_falls_due_is_not_dropped(
    local_sync: LocalSync,
    registry: Registry,
    publish: PublishFn,
    members: Membership,
    control: Control,
) -> None:
    """Heartbeats every 2 ms and no periodic reconcile: every change must travel by its event.

    The loop used to clear its wake-up flag after a heartbeat timeout too, dropping an event
    that landed in between; the change then waited for the next periodic reconcile.
    """
    publish("m", "1.0")
    publish("m", "2.0")
    local_sync(start=True, heartbeat_s=0.002)
    assert eventually(lambda: len(members.nodes()) == 1)  # a member, so wait_for_acks waits for it
    for i in range(400):
        change = control.pin("m", ("1.0", "2.0")[i % 2])
        [row] = members.wait_for_acks(change, timeout_s=5)
        assert row.outcome == Outcome.OK, (i, row)


def test_a_heartbeat_that_keeps_failing_backs_off_instead_of_spinning(
    local_sync: LocalSync, publish: PublishFn
) -> None:
    """A bug-class error in the heartbeat (injected: real Redis cannot raise one) is retried with
    backoff. It used to be retried at once, in a loop: ~70% of a core and megabytes of tracebacks."""
    publish("m", "1.0")
    sync = local_sync()
    calls = 0

    def broken_heartbeat(*_: object, **__: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    sync.members.heartbeat = broken_heartbeat  # type: ignore[method-assign]
    asyncio.run(sync.start())
    assert eventually(lambda: calls >= 3, timeout=10)
    time.sleep(2)  # a spinning loop makes thousands of attempts in this time, backoff a handful
    assert calls < 40, calls
    assert sync._throttle.suppressed >= calls - 2  # one traceback per 30 s, not one per try
    assert metric_value(sync, "modelcache_background_errors_total", thread="loop") >= calls - 1
    assert all(t.is_alive() for t in sync._threads)
