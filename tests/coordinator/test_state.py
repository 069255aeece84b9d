"""Cluster state against a real redis-server."""

from __future__ import annotations

import json
import time

import pytest
import redis

from coordinator.errors import ClusterUnavailable, VersionNotFound
from coordinator.keys import ALL
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Ack, Change, Heartbeat, ModelAck, Outcome
from tests.helpers import PublishFn


def listen(state: ClusterState) -> redis.client.PubSub:
    pubsub = state.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(state.keys.events)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    return pubsub


def next_event(pubsub: redis.client.PubSub) -> dict | None:
    msg = pubsub.get_message(timeout=1)
    return None if msg is None else json.loads(msg["data"])


def test_pin_changes_keys_and_announces_atomically(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    pubsub = listen(state)
    before = time.time()
    change = state.pin("churn", "1.0.0", registry)
    event = next_event(pubsub)
    pubsub.close()
    assert (change.seq, change.generation) == (1, 1)
    assert event["kind"] == "pin" and event["model_type"] == "churn" and event["version"] == "1.0.0"
    assert event["generation"] == 1 and event["seq"] == 1 and event["origin"] == "test"
    assert before <= event["ts"] <= time.time()
    snap = state.read()
    assert snap.pins == {"churn": "1.0.0"} and snap.generations == {"churn": 1} and snap.seq == 1
    assert snap.changes["churn"] == Change.from_json(event) == change
    assert change.epoch and snap.epoch == change.epoch


def test_unpin_reload_and_reload_all_bump_generations(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    state.pin("churn", "1.0.0", registry)
    assert state.unpin("churn").generation == 2
    assert state.unpin("churn").seq == 0  # not pinned any more: nothing published
    reload = state.reload("churn", None, registry)
    assert (reload.kind, reload.generation, reload.seq) == ("reload", 3, 3)
    everything = state.reload(None, None, registry)
    assert everything.model_type == ALL and everything.generation == 1
    snap = state.read()
    assert snap.pins == {} and snap.generations == {"churn": 3, ALL: 1} and snap.seq == 4


def test_pinning_a_missing_version_publishes_nothing(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    pubsub = listen(state)
    with pytest.raises(VersionNotFound, match="available versions: 1"):
        state.pin("churn", "9.9.9", registry)
    with pytest.raises(VersionNotFound):
        state.reload("churn", "9.9.9", registry)
    assert next_event(pubsub) is None
    pubsub.close()
    assert state.read().seq == 0


def test_prefixes_isolate_clusters(
    redis_server: RedisServer, state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    other = ClusterState.from_url(redis_server.url, "other-cluster:")
    try:
        state.pin("churn", "1.0.0", registry)
        assert other.read().pins == {}
    finally:
        other.close()


def test_heartbeats_expire(state: ClusterState) -> None:
    state.heartbeat(Heartbeat("n1", "http://x"), ttl_s=0.2)
    state.heartbeat(Heartbeat("n2", "http://y"), ttl_s=30)
    assert [n["node_id"] for n in state.nodes()] == ["n1", "n2"]
    time.sleep(0.3)
    assert [n["node_id"] for n in state.nodes()] == ["n2"]
    state.leave("n2")
    assert state.nodes() == []


def test_wait_for_acks_reports_each_node_and_times_out(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    for n in ("a", "b"):
        state.heartbeat(Heartbeat(n, f"http://{n}"), ttl_s=30)
    change = state.pin("churn", "1.0.0", registry)
    outcome = ModelAck("churn", Outcome.OK, "1.0.0", None, "loaded", change.epoch, change.seq, 1, 3.0)
    state.write_ack(Ack("a", change.epoch, change.seq, time.time(), {"churn": outcome}))
    rows = state.wait_for_acks(change, timeout_s=0.2)
    assert [(r.node_id, r.outcome, r.version) for r in rows] == [("a", "ok", "1.0.0"), ("b", "timeout", None)]
    assert rows[0].propagation_ms == 3.0


def test_popularity(state: ClusterState) -> None:
    state.add_popularity({"a": 5, "b": 1})
    state.add_popularity({"b": 10, "c": 2})
    assert state.popular(2) == ["b", "a"]


def test_unreachable_redis_fails_fast_with_a_clear_error(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    with RedisServer() as server:
        state = ClusterState.from_url(server.url)
        server.stop()
        try:
            with pytest.raises(ClusterUnavailable, match=r"unreachable.*MODELCACHE_REDIS_URL"):
                state.pin("churn", "1.0.0", registry)
            with pytest.raises(ClusterUnavailable):
                state.read()
        finally:
            state.close()
