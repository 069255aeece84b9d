"""Desired state in Redis (coordinator.state) against a real redis-server."""

from __future__ import annotations

import json
import time

import pytest

from coordinator import cli
from coordinator.control import Control
from coordinator.errors import (
    ClusterStateCorrupt,
    ClusterUnavailable,
)
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Ack, Change, ChangeKind, Heartbeat, ModelAck, Outcome
from tests.helpers import PublishFn


def test_prefixes_isolate_clusters(
    redis_server: RedisServer, registry: Registry, publish: PublishFn, control: Control
) -> None:
    publish("churn", "1.0.0")
    other = Link.from_url(redis_server.url, "other-cluster:")
    try:
        control.pin("churn", "1.0.0")
        assert ClusterState(other).read().pins == {}
    finally:
        other.close()


def test_popularity(state: ClusterState) -> None:
    state.add_popularity({"a": 5, "b": 1})
    state.add_popularity({"b": 10, "c": 2})
    assert state.popular(2) == ["b", "a"]


def test_unreachable_redis_fails_fast_with_a_clear_error(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    with RedisServer() as server:
        control = Control.connect(server.url, registry)
        server.stop()
        with control:
            with pytest.raises(ClusterUnavailable, match=r"unreachable.*MODELCACHE_REDIS_URL"):
                control.pin("churn", "1.0.0")
            with pytest.raises(ClusterUnavailable):
                control.state.read()


def test_a_reset_redis_starts_a_new_epoch_and_old_acks_answer_nothing(
    state: ClusterState,
    registry: Registry,
    publish: PublishFn,
    control: Control,
    members: Membership,
    link: Link,
) -> None:
    publish("churn", "1.0.0")
    members.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    before = control.reload("churn", None)
    done = ModelAck("churn", Outcome.OK, "1.0.0", None, "loaded", before.epoch, before.seq, 1)
    old_ack = Ack("a", before.epoch, before.seq, time.time(), {"churn": done})
    link.client.flushall()  # Redis restarted empty: seq and generations start again at 1
    members.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    members.write_ack(old_ack)  # the node has not seen the new change yet
    after = control.reload("churn", None)
    assert (after.seq, after.generation) == (before.seq, before.generation) == (1, 1)
    assert after.epoch and after.epoch != before.epoch and state.read().epoch == after.epoch
    [row] = members.wait_for_acks(after, timeout_s=0.2)
    assert row.outcome is Outcome.TIMEOUT  # the old ack (same seq, old epoch) is not this change's
    assert control.reload("churn", None).epoch == after.epoch  # the epoch is kept, not renewed


def test_garbage_in_redis_is_skipped_not_raised(
    state: ClusterState,
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    control: Control,
    members: Membership,
    link: Link,
) -> None:
    publish("churn", "1.0.0")
    k, c = link.keys, link.client
    members.heartbeat(Heartbeat("good", "http://good"), ttl_s=30)
    c.zadd(k.members, {"junk": 2**50, "shape": 2**50, "list": 2**50, "no-heartbeat": 2**50})
    c.hset(k.heartbeats, mapping={"junk": b"\xff\xfe not json", "shape": '{"node_id": 5}', "list": "[1]"})
    change = control.pin("churn", "1.0.0")
    c.set(k.ack("good"), "garbage")
    c.hset(k.pins, mapping={"bad": "not a version!!", "../etc": "1.0"})
    c.hset(k.generations, "weird", "NaN")
    c.hset(k.changes, "weird", "{not json")
    c.zincrby(k.popularity, 5, "../etc")

    assert [n["node_id"] for n in members.nodes()] == ["good"]
    view = control.describe()
    assert view["pins"] == {"churn": "1.0.0"} and view["generations"] == {"churn": 1}
    snap = state.read()
    assert set(snap.bad_pins) == {"bad", "../etc"} and "not a PEP 440 version" in snap.bad_pins["bad"]
    assert set(snap.changes) == {"churn"} and "weird" in snap.bad_changes
    assert state.popular(3) == []
    [row] = members.wait_for_acks(change, timeout_s=0.2)  # an unreadable ack is no ack, not a crash
    assert row.outcome is Outcome.TIMEOUT
    assert "ignoring heartbeat" in caplog.text and "ignoring acknowledgement" in caplog.text

    assert cli.main(["status", "--json", "--redis-url", redis_server.url, "--redis-prefix", k.prefix]) == 0
    assert [n["node_id"] for n in json.loads(capsys.readouterr().out)["nodes"]] == ["good"]


def test_an_unreadable_canary_is_set_aside_not_raised(state: ClusterState, link: Link) -> None:
    link.client.hset(
        link.keys.canaries, mapping={"churn": "{junk", "fraud": '{"version":"1.0","percent":900}'}
    )
    snap = state.read()
    assert snap.canaries == {} and set(snap.bad_canaries) == {"churn", "fraud"}
    assert "outside 0-100" in snap.bad_canaries["fraud"]


def test_a_state_key_of_the_wrong_type_is_corrupt_state_not_an_outage(
    state: ClusterState, registry: Registry, publish: PublishFn, control: Control, link: Link
) -> None:
    publish("m", "1.0")
    link.client.set(link.keys.pins, "x")  # WRONGTYPE for every hash command on it
    with pytest.raises(ClusterStateCorrupt) as caught:
        state.pins()
    message = str(caught.value)
    assert "corrupt" in message and "WRONGTYPE" not in message and "127.0.0.1" not in message
    link.client.delete(link.keys.pins)
    link.client.set(link.keys.seq, "notanumber")  # the change script's INCR fails
    with pytest.raises(ClusterStateCorrupt):
        control.pin("m", "1.0")


def test_a_change_records_the_callers_trace_context(
    link: Link, registry: Registry, publish: PublishFn
) -> None:
    """Both where a node reads it (the change record) and what wakes it (the event) carry it."""
    publish("churn", "1.0.0")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = ClusterState(link, origin="n1", trace_context=lambda: parent)
    with link.client.pubsub() as sub:
        sub.subscribe(link.keys.events)
        sub.get_message(timeout=1)  # the subscribe confirmation
        change = traced.publish(ChangeKind.PIN, "churn", "1.0.0")
        event = sub.get_message(timeout=5)
    assert change.traceparent == parent
    assert Change.from_json(event["data"]).traceparent == parent
    assert traced.read().changes["churn"].traceparent == parent
    untraced = ClusterState(link, origin="cli").publish(ChangeKind.PIN, "churn", "1.0.0")
    assert untraced.traceparent == ""
