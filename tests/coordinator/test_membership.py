"""Membership and acknowledgements (coordinator.membership) against a real redis-server."""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.control import Control
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from coordinator.wire import Ack, Heartbeat, ModelAck, Outcome
from tests.helpers import PublishFn


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
