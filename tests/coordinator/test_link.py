"""Redis errors translated (coordinator.link): a refusing Redis is an outage, junk is corruption."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis._parsers.base import BaseParser

from coordinator.errors import ClusterRefusing, ClusterStateCorrupt, ClusterUnavailable
from coordinator.link import REFUSALS, Link, refusal
from coordinator.redis_server import RedisServer
from coordinator.state import ClusterState
from coordinator.wire import ChangeKind


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: its memory limit and ACL must not leak into others."""
    with RedisServer() as server:
        yield server


def test_a_redis_at_maxmemory_is_cluster_unavailable_naming_the_reason(own_redis: RedisServer) -> None:
    link = Link.from_url(own_redis.url)
    state = ClusterState(link, origin="test")
    try:
        admin = redis.Redis.from_url(own_redis.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        with pytest.raises(ClusterRefusing) as refused:
            state.publish(ChangeKind.PIN, "m", "1.0")
        assert refused.value.reason == "oom" and refused.value.code == "cluster_unavailable"
        assert isinstance(refused.value, ClusterUnavailable)  # 503 and CLI exit 3, like a Redis down
        assert "out of memory" in str(refused.value) and "maxmemory" in str(refused.value)
        admin.config_set("maxmemory", 0)
        assert state.publish(ChangeKind.PIN, "m", "1.0").seq > 0
    finally:
        link.close()


def test_a_command_the_acl_forbids_is_a_refusal_not_corruption(own_redis: RedisServer) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@read", "+ping"])
    link = Link.from_url(f"redis://reader:pw@127.0.0.1:{own_redis.port}/0")
    try:
        with pytest.raises(ClusterRefusing) as refused:
            ClusterState(link, origin="test").publish(ChangeKind.PIN, "m", "1.0")
        assert refused.value.reason == "noperm" and "ACL" in str(refused.value)
    finally:
        link.close()


def test_junk_in_a_state_key_is_still_corruption(own_redis: RedisServer) -> None:
    link = Link.from_url(own_redis.url)
    try:
        link.client.set(link.keys.pins, "not a hash")
        with pytest.raises(ClusterStateCorrupt):
            link.call("read pins", link.client.hgetall, link.keys.pins)
    finally:
        link.close()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "oom"),
        ("MISCONF Redis is configured to save RDB snapshots, but it's unable to persist", "misconf"),
        ("NOPERM User reader has no permissions to run the 'set' command", "noperm"),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", "busy"),
        ("READONLY You can't write against a read only replica.", "readonly"),
        ("LOADING Redis is loading the dataset in memory", "loading"),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "masterdown"),
        ("NOREPLICAS Not enough good replicas to write.", "noreplicas"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("ERR value is not an integer or out of range", None),
    ],
)
def test_refusals_are_told_from_junk_by_redis_error_code(reply: str, reason: str | None) -> None:
    """Redis' replies as redis-py parses them off the wire (some become classes, some stay generic)."""
    assert refusal(BaseParser.parse_error(reply)) == reason
    assert reason is None or reason in REFUSALS


def test_a_connection_error_is_no_refusal() -> None:
    assert refusal(redis.ConnectionError("Connection refused")) is None


def test_a_refusal_inside_a_lua_script_is_still_a_refusal() -> None:
    wrapped = BaseParser.parse_error(
        "ERR Error running script (call to f_4e84): @user_script:6: @user_script: 6: "
        "-OOM command not allowed when used memory > 'maxmemory'."
    )
    assert refusal(wrapped) == "oom"
    junk = BaseParser.parse_error(
        "ERR Error running script (call to f_4e84): @user_script:6: -WRONGTYPE Operation against a key"
    )
    assert refusal(junk) is None
