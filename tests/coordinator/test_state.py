"""Cluster state against a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import redis

from coordinator import cli
from coordinator.control import Control
from coordinator.errors import (
    CanaryNotFound,
    ClusterStateCorrupt,
    ClusterUnavailable,
    InvalidName,
    VersionNotFound,
)
from coordinator.keys import ALL
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Ack, Canary, Change, ChangeKind, Heartbeat, ModelAck, Outcome
from tests.helpers import PublishFn


def listen(link: Link) -> redis.client.PubSub:
    pubsub = link.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(link.keys.events)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    return pubsub


def next_event(pubsub: redis.client.PubSub) -> dict | None:
    msg = pubsub.get_message(timeout=1)
    return None if msg is None else json.loads(msg["data"])


def test_pin_changes_keys_and_announces_atomically(
    state: ClusterState, registry: Registry, publish: PublishFn, control: Control, link: Link
) -> None:
    publish("churn", "1.0.0")
    pubsub = listen(link)
    before = time.time()
    change = control.pin("churn", "1.0.0")
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
    state: ClusterState, registry: Registry, publish: PublishFn, control: Control
) -> None:
    publish("churn", "1.0.0")
    control.pin("churn", "1.0.0")
    assert control.unpin("churn").generation == 2
    assert control.unpin("churn").seq == 0  # not pinned any more: nothing published
    reload = control.reload("churn", None)
    assert (reload.kind, reload.generation, reload.seq) == ("reload", 3, 3)
    everything = control.reload(None)
    assert everything.model_type == ALL and everything.generation == 1
    snap = state.read()
    assert snap.pins == {} and snap.generations == {"churn": 3, ALL: 1} and snap.seq == 4


def test_pinning_a_missing_version_publishes_nothing(
    state: ClusterState, registry: Registry, publish: PublishFn, control: Control, link: Link
) -> None:
    publish("churn", "1.0.0")
    pubsub = listen(link)
    with pytest.raises(VersionNotFound, match="available versions: 1"):
        control.pin("churn", "9.9.9")
    with pytest.raises(VersionNotFound):
        control.reload("churn", "9.9.9")
    assert next_event(pubsub) is None
    pubsub.close()
    assert state.read().seq == 0


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


def test_heartbeats_expire(members: Membership) -> None:
    members.heartbeat(Heartbeat("n1", "http://x"), ttl_s=0.2)
    members.heartbeat(Heartbeat("n2", "http://y"), ttl_s=30)
    assert [n["node_id"] for n in members.nodes()] == ["n1", "n2"]
    time.sleep(0.3)
    assert [n["node_id"] for n in members.nodes()] == ["n2"]
    members.leave("n2")
    assert members.nodes() == []


def test_wait_for_acks_reports_each_node_and_times_out(
    registry: Registry, publish: PublishFn, control: Control, members: Membership
) -> None:
    publish("churn", "1.0.0")
    for n in ("a", "b"):
        members.heartbeat(Heartbeat(n, f"http://{n}"), ttl_s=30)
    change = control.pin("churn", "1.0.0")
    outcome = ModelAck("churn", Outcome.OK, "1.0.0", None, "loaded", change.epoch, change.seq, 1, 3.0)
    members.write_ack(Ack("a", change.epoch, change.seq, time.time(), {"churn": outcome}))
    rows = members.wait_for_acks(change, timeout_s=0.2)
    assert [(r.node_id, r.outcome, r.version) for r in rows] == [("a", "ok", "1.0.0"), ("b", "timeout", None)]
    assert rows[0].propagation_ms == 3.0


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


def test_two_operators_at_once_each_learn_what_won(
    registry: Registry, publish: PublishFn, control: Control, members: Membership
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "2.0.0")
    members.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    first = control.pin("churn", "1.0.0")
    second = control.pin("churn", "2.0.0")
    assert second.seq == first.seq + 1
    # The node saw both at once and applied the later one.
    applied = ModelAck("churn", Outcome.OK, "2.0.0", None, "loaded", second.epoch, second.seq, 2)
    members.write_ack(Ack("a", second.epoch, second.seq, time.time(), {"churn": applied}))
    [row] = members.wait_for_acks(first, timeout_s=1)
    assert (row.outcome, row.version) == (Outcome.OK, "2.0.0")
    assert row.detail.startswith(f"superseded by change #{second.seq}")
    [row] = members.wait_for_acks(second, timeout_s=1)
    assert row.detail == "loaded"


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


def test_a_change_waits_for_a_replica_and_says_when_none_confirmed_it(
    registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    with (
        RedisServer() as primary,
        RedisServer(args=["--replicaof", "127.0.0.1", str(primary.port)]) as replica,
    ):
        control = Control.connect(primary.url, registry, replica_timeout_s=0.3)
        with control:
            deadline = time.monotonic() + 15
            while control.state.link.client.info("replication")["connected_slaves"] < 1:
                assert time.monotonic() < deadline, "replica never connected"
                time.sleep(0.05)
            change = control.pin("churn", "1.0.0")
            assert change.replicated is True
            assert "replicated" not in change.to_json()  # a fact about the write, not the change
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGSTOP)  # connected, but confirms nothing
            try:
                stalled = control.reload("churn", None)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            assert stalled.replicated is False and stalled.seq == change.seq + 1
    with RedisServer() as alone, Control.connect(alone.url, registry, replica_timeout_s=30) as control:
        assert control.pin("churn", "1.0.0").replicated is None  # no replica: no WAIT


def test_waiters_are_woken_by_the_published_ack_not_by_polling(
    registry: Registry,
    publish: PublishFn,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    prefix: str,
    control: Control,
    members: Membership,
) -> None:
    publish("churn", "1.0.0")
    members.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    change = control.pin("churn", "1.0.0")
    reads = []
    real_acks = members.acks
    monkeypatch.setattr(members, "acks", lambda ids: reads.append(set(ids)) or real_acks(ids))
    writer = Link.from_url(redis_server.url, prefix)
    ack = Ack("a", change.epoch, change.seq, time.time(), {})
    timer = threading.Timer(0.2, Membership(writer).write_ack, [ack])
    timer.start()
    try:
        [row] = members.wait_for_acks(change, timeout_s=30, poll_s=30)
    finally:
        timer.join()
        writer.close()
    assert row.outcome is Outcome.OK
    assert reads == [{"a"}]  # one read before waiting; the ack itself arrived by pub/sub


def test_membership_is_not_a_scan_and_expires_on_the_redis_clock(members: Membership, link: Link) -> None:
    members.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    members.heartbeat(Heartbeat("b", "http://b"), ttl_s=0.05)
    time.sleep(0.1)
    assert [n["node_id"] for n in members.nodes()] == ["a"]
    members.heartbeat(Heartbeat("c", "http://c"), ttl_s=30)  # sweeps b's expired record
    assert set(link.client.hkeys(link.keys.heartbeats)) == {"a", "c"}
    members.leave("a")
    assert [n["node_id"] for n in members.nodes()] == ["c"]


# -- canaries ---------------------------------------------------------------------
def test_canary_promote_and_abort_change_keys_and_announce_atomically(
    state: ClusterState, registry: Registry, publish: PublishFn, control: Control, link: Link
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    pubsub = listen(link)
    change = control.canary("churn", "1.1.0", 20)
    event = next_event(pubsub)
    assert event["kind"] == "canary" and event["version"] == "1.1.0" and event["seq"] == change.seq == 1
    snap = state.read()
    assert snap.canaries == {"churn": Canary("1.1.0", 20.0)} and snap.pins == {}
    assert control.describe()["canaries"] == {"churn": {"version": "1.1.0", "percent": 20.0}}

    promoted = control.promote("churn")
    event = next_event(pubsub)
    # One change: the pin and the canary's end are never seen apart.
    assert event["kind"] == "promote" and event["version"] == "1.1.0" and promoted.seq == 2
    snap = state.read()
    assert snap.pins == {"churn": "1.1.0"} and snap.canaries == {} and snap.generations["churn"] == 2

    with pytest.raises(CanaryNotFound, match="no canary runs for 'churn'"):
        control.promote("churn")
    assert control.abort_canary("churn").seq == 0  # nothing to abort: nothing published
    assert next_event(pubsub) is None

    control.canary("churn", "1.0.0", 5.5)
    aborted = control.abort_canary("churn")
    assert aborted.kind is ChangeKind.CANARY_ABORT and aborted.seq == 4
    assert state.read().canaries == {} and state.read().pins == {"churn": "1.1.0"}
    pubsub.close()


@pytest.mark.parametrize("percent", [-1, 100.5, float("nan"), "20", True, None])
def test_canary_refuses_a_percent_outside_0_to_100_before_publishing(
    state: ClusterState, registry: Registry, publish: PublishFn, percent: object, control: Control
) -> None:
    publish("churn", "1.0.0")
    with pytest.raises(InvalidName, match="must be a number from 0 to 100"):
        control.canary("churn", "1.0.0", percent)
    with pytest.raises(VersionNotFound):
        control.canary("churn", "9.0.0", 10)
    assert state.read().seq == 0 and state.read().canaries == {}


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
