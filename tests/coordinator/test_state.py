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
from coordinator.errors import (
    CanaryNotFound,
    ClusterStateCorrupt,
    ClusterUnavailable,
    InvalidName,
    VersionNotFound,
)
from coordinator.keys import ALL
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Ack, Canary, Change, ChangeKind, Heartbeat, ModelAck, Outcome
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


def test_a_reset_redis_starts_a_new_epoch_and_old_acks_answer_nothing(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    state.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    before = state.reload("churn", None, registry)
    done = ModelAck("churn", Outcome.OK, "1.0.0", None, "loaded", before.epoch, before.seq, 1)
    old_ack = Ack("a", before.epoch, before.seq, time.time(), {"churn": done})
    state.client.flushall()  # Redis restarted empty: seq and generations start again at 1
    state.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    state.write_ack(old_ack)  # the node has not seen the new change yet
    after = state.reload("churn", None, registry)
    assert (after.seq, after.generation) == (before.seq, before.generation) == (1, 1)
    assert after.epoch and after.epoch != before.epoch and state.read().epoch == after.epoch
    [row] = state.wait_for_acks(after, timeout_s=0.2)
    assert row.outcome is Outcome.TIMEOUT  # the old ack (same seq, old epoch) is not this change's
    assert state.reload("churn", None, registry).epoch == after.epoch  # the epoch is kept, not renewed


def test_two_operators_at_once_each_learn_what_won(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "2.0.0")
    state.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    first = state.pin("churn", "1.0.0", registry)
    second = state.pin("churn", "2.0.0", registry)
    assert second.seq == first.seq + 1
    # The node saw both at once and applied the later one.
    applied = ModelAck("churn", Outcome.OK, "2.0.0", None, "loaded", second.epoch, second.seq, 2)
    state.write_ack(Ack("a", second.epoch, second.seq, time.time(), {"churn": applied}))
    [row] = state.wait_for_acks(first, timeout_s=1)
    assert (row.outcome, row.version) == (Outcome.OK, "2.0.0")
    assert row.detail.startswith(f"superseded by change #{second.seq}")
    [row] = state.wait_for_acks(second, timeout_s=1)
    assert row.detail == "loaded"


def test_garbage_in_redis_is_skipped_not_raised(
    state: ClusterState,
    registry: Registry,
    publish: PublishFn,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish("churn", "1.0.0")
    k, c = state.keys, state.client
    state.heartbeat(Heartbeat("good", "http://good"), ttl_s=30)
    c.zadd(k.members, {"junk": 2**50, "shape": 2**50, "list": 2**50, "no-heartbeat": 2**50})
    c.hset(k.heartbeats, mapping={"junk": b"\xff\xfe not json", "shape": '{"node_id": 5}', "list": "[1]"})
    change = state.pin("churn", "1.0.0", registry)
    c.set(k.ack("good"), "garbage")
    c.hset(k.pins, mapping={"bad": "not a version!!", "../etc": "1.0"})
    c.hset(k.generations, "weird", "NaN")
    c.hset(k.changes, "weird", "{not json")
    c.zincrby(k.popularity, 5, "../etc")

    assert [n["node_id"] for n in state.nodes()] == ["good"]
    view = state.describe()
    assert view["pins"] == {"churn": "1.0.0"} and view["generations"] == {"churn": 1}
    snap = state.read()
    assert set(snap.bad_pins) == {"bad", "../etc"} and "not a PEP 440 version" in snap.bad_pins["bad"]
    assert set(snap.changes) == {"churn"} and "weird" in snap.bad_changes
    assert state.popular(3) == []
    [row] = state.wait_for_acks(change, timeout_s=0.2)  # an unreadable ack is no ack, not a crash
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
        state = ClusterState.from_url(primary.url, replica_timeout_s=0.3)
        try:
            deadline = time.monotonic() + 15
            while state.client.info("replication")["connected_slaves"] < 1:
                assert time.monotonic() < deadline, "replica never connected"
                time.sleep(0.05)
            change = state.pin("churn", "1.0.0", registry)
            assert change.replicated is True
            assert "replicated" not in change.to_json()  # a fact about the write, not the change
            assert replica.proc is not None
            os.kill(replica.proc.pid, signal.SIGSTOP)  # connected, but confirms nothing
            try:
                stalled = state.reload("churn", None, registry)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            assert stalled.replicated is False and stalled.seq == change.seq + 1
        finally:
            state.close()
    with RedisServer() as alone:
        state = ClusterState.from_url(alone.url, replica_timeout_s=30)
        try:
            assert state.pin("churn", "1.0.0", registry).replicated is None  # no replica: no WAIT
        finally:
            state.close()


def test_waiters_are_woken_by_the_published_ack_not_by_polling(
    state: ClusterState,
    registry: Registry,
    publish: PublishFn,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    prefix: str,
) -> None:
    publish("churn", "1.0.0")
    state.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    change = state.pin("churn", "1.0.0", registry)
    reads = []
    real_acks = state.acks
    monkeypatch.setattr(state, "acks", lambda ids: reads.append(set(ids)) or real_acks(ids))
    writer = ClusterState.from_url(redis_server.url, prefix)
    ack = Ack("a", change.epoch, change.seq, time.time(), {})
    timer = threading.Timer(0.2, writer.write_ack, [ack])
    timer.start()
    try:
        [row] = state.wait_for_acks(change, timeout_s=30, poll_s=30)
    finally:
        timer.join()
        writer.close()
    assert row.outcome is Outcome.OK
    assert reads == [{"a"}]  # one read before waiting; the ack itself arrived by pub/sub


def test_membership_is_not_a_scan_and_expires_on_the_redis_clock(state: ClusterState) -> None:
    state.heartbeat(Heartbeat("a", "http://a"), ttl_s=30)
    state.heartbeat(Heartbeat("b", "http://b"), ttl_s=0.05)
    time.sleep(0.1)
    assert [n["node_id"] for n in state.nodes()] == ["a"]
    state.heartbeat(Heartbeat("c", "http://c"), ttl_s=30)  # sweeps b's expired record
    assert set(state.client.hkeys(state.keys.heartbeats)) == {"a", "c"}
    state.leave("a")
    assert [n["node_id"] for n in state.nodes()] == ["c"]


# -- canaries ---------------------------------------------------------------------
def test_canary_promote_and_abort_change_keys_and_announce_atomically(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    pubsub = listen(state)
    change = state.canary("churn", "1.1.0", 20, registry)
    event = next_event(pubsub)
    assert event["kind"] == "canary" and event["version"] == "1.1.0" and event["seq"] == change.seq == 1
    snap = state.read()
    assert snap.canaries == {"churn": Canary("1.1.0", 20.0)} and snap.pins == {}
    assert state.describe()["canaries"] == {"churn": {"version": "1.1.0", "percent": 20.0}}

    promoted = state.promote("churn", registry)
    event = next_event(pubsub)
    # One change: the pin and the canary's end are never seen apart.
    assert event["kind"] == "promote" and event["version"] == "1.1.0" and promoted.seq == 2
    snap = state.read()
    assert snap.pins == {"churn": "1.1.0"} and snap.canaries == {} and snap.generations["churn"] == 2

    with pytest.raises(CanaryNotFound, match="no canary runs for 'churn'"):
        state.promote("churn", registry)
    assert state.abort_canary("churn").seq == 0  # nothing to abort: nothing published
    assert next_event(pubsub) is None

    state.canary("churn", "1.0.0", 5.5, registry)
    aborted = state.abort_canary("churn")
    assert aborted.kind is ChangeKind.CANARY_ABORT and aborted.seq == 4
    assert state.read().canaries == {} and state.read().pins == {"churn": "1.1.0"}
    pubsub.close()


@pytest.mark.parametrize("percent", [-1, 100.5, float("nan"), "20", True, None])
def test_canary_refuses_a_percent_outside_0_to_100_before_publishing(
    state: ClusterState, registry: Registry, publish: PublishFn, percent: object
) -> None:
    publish("churn", "1.0.0")
    with pytest.raises(InvalidName, match="must be a number from 0 to 100"):
        state.canary("churn", "1.0.0", percent, registry)
    with pytest.raises(VersionNotFound):
        state.canary("churn", "9.0.0", 10, registry)
    assert state.read().seq == 0 and state.read().canaries == {}


def test_an_unreadable_canary_is_set_aside_not_raised(state: ClusterState) -> None:
    state.client.hset(
        state.keys.canaries, mapping={"churn": "{junk", "fraud": '{"version":"1.0","percent":900}'}
    )
    snap = state.read()
    assert snap.canaries == {} and set(snap.bad_canaries) == {"churn", "fraud"}
    assert "outside 0-100" in snap.bad_canaries["fraud"]


def test_a_state_key_of_the_wrong_type_is_corrupt_state_not_an_outage(
    state: ClusterState, registry: Registry, publish: PublishFn
) -> None:
    publish("m", "1.0")
    state.client.set(state.keys.pins, "x")  # WRONGTYPE for every hash command on it
    with pytest.raises(ClusterStateCorrupt) as caught:
        state.pins()
    message = str(caught.value)
    assert "corrupt" in message and "WRONGTYPE" not in message and "127.0.0.1" not in message
    state.client.delete(state.keys.pins)
    state.client.set(state.keys.seq, "notanumber")  # the change script's INCR fails
    with pytest.raises(ClusterStateCorrupt):
        state.pin("m", "1.0", registry)
