"""Operator commands (coordinator.control) against a real redis-server: check, publish, answer."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from coordinator.control import Control
from coordinator.errors import (
    CanaryNotFound,
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


def wait_in_sync(primary: redis.Redis, replica: redis.Redis, timeout_s: float = 30) -> None:
    """Until the replica has finished its full sync: counted as connected is not enough (it may
    still be loading the primary's snapshot, and then confirms no write)."""
    deadline = time.monotonic() + timeout_s
    while True:
        mine = replica.info("replication")
        theirs = primary.info("replication")
        slave = theirs.get("slave0") or {}
        if mine.get("master_link_status") == "up" and slave.get("state") == "online":
            replica.close()
            return
        assert time.monotonic() < deadline, f"replica never in sync: {mine}, {theirs}"
        time.sleep(0.05)


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


def test_a_change_waits_for_a_replica_and_says_when_none_confirmed_it(
    registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    with (
        RedisServer() as primary,
        RedisServer(args=["--replicaof", "127.0.0.1", str(primary.port)]) as replica,
    ):
        # Generous for the write a replica must confirm (a loaded machine is slow), short for the stall.
        control = Control.connect(primary.url, registry, replica_timeout_s=10)
        with control:
            wait_in_sync(control.state.link.client, redis.Redis(host="127.0.0.1", port=replica.port))
            change = control.pin("churn", "1.0.0")
            assert change.replicated is True
            assert "replicated" not in change.to_json()  # a fact about the write, not the change
            assert replica.proc is not None
            control.state.replica_timeout_s = 0.3
            os.kill(replica.proc.pid, signal.SIGSTOP)  # connected, but confirms nothing
            try:
                stalled = control.reload("churn", None)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            assert stalled.replicated is False and stalled.seq == change.seq + 1
    with RedisServer() as alone, Control.connect(alone.url, registry, replica_timeout_s=30) as control:
        assert control.pin("churn", "1.0.0").replicated is None  # no replica: no WAIT


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


def test_canaries_list_every_live_nodes_outcome(
    control: Control, members: Membership, publish: PublishFn
) -> None:
    """The one canary listing both the CLI (over Redis) and GET /api/v1/canaries print."""
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    assert control.canaries() == {"canaries": {}}
    change = control.canary("churn", "1.1.0", 20)
    for node_id in ("a", "b"):
        members.heartbeat(Heartbeat(node_id, f"http://{node_id}"), ttl_s=30)
    failed = ModelAck("churn", Outcome.FAILED, "1.0.0", detail="canary 1.1.0 not loaded", epoch=change.epoch)
    members.write_ack(Ack("a", change.epoch, change.seq, time.time(), {"churn": failed}, {"churn": "1.0.0"}))
    assert control.canaries() == {
        "canaries": {
            "churn": {
                "version": "1.1.0",
                "percent": 20.0,
                "nodes": [
                    {
                        "node_id": "a",
                        "outcome": "failed",
                        "detail": "canary 1.1.0 not loaded",
                        "serving": "1.0.0",
                    },
                ],
            }
        }
    }
