"""coordinator.lbagent against a real Redis and a real HAProxy (no nodes: the servers are down).

The routing through HAProxy with real nodes is tests/deploy/test_lb_placement.py; here, what the
agent makes of what it reads: junk in Redis, nodes HAProxy does not know, leadership.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from coordinator import lbagent
from coordinator.haproxy_api import RuntimeAPI, Server
from coordinator.haproxy_process import INSTALL, HAProxy
from coordinator.lb import PLACEMENT_MAP
from coordinator.lbagent import PlacementAgent
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.placement import Assignment
from coordinator.wire import Heartbeat
from tests.helpers import free_port, require_binary


@pytest.fixture
def lb() -> Iterator[HAProxy]:
    require_binary("haproxy", INSTALL)
    ports = [free_port(), free_port()]
    with HAProxy([f"127.0.0.1:{p}" for p in ports], free_port()) as proxy:
        proxy.node_ports = ports  # type: ignore[attr-defined]
        yield proxy


def beat(members: Membership, node_id: str, port: int) -> None:
    members.heartbeat(Heartbeat(node_id, f"http://127.0.0.1:{port}", stats={"cache_size": 3}), ttl_s=30)


def entries(lb: HAProxy) -> dict[str, str]:
    [text] = RuntimeAPI(str(lb.runtime_api)).run([f"show map {PLACEMENT_MAP}"])
    return dict(line.split()[1:3] for line in text.splitlines() if line.strip())


def test_the_leader_places_popular_models_and_every_agent_writes_the_map(
    lb: HAProxy, link: Link, members: Membership
) -> None:
    a, b = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    beat(members, "nb", b)
    link.client.zadd(link.keys.popularity, {"m1": 5, "m2": 3})
    first = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "first")
    second = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "second")
    first.tick()
    second.tick()
    assert first.leader and not second.leader
    placed = Assignment.from_json(link.client.get(link.keys.placement))
    assert placed.generation == 1 and sorted(placed.models) == ["m1", "m2"]
    assert {placed.nodes_of("m1")[0], placed.nodes_of("m2")[0]} == {"na", "nb"}
    backend = {"na": "place_node1", "nb": "place_node2"}
    assert entries(lb) == {
        f"{m}/{i}": backend[node] for m in ("m1", "m2") for i, node in enumerate(placed.slot_table(m))
    }
    first.tick()  # nothing changed: no new generation
    assert Assignment.from_json(link.client.get(link.keys.placement)).generation == 1


def test_junk_in_redis_is_ignored_and_the_map_kept(lb: HAProxy, link: Link, members: Membership) -> None:
    a, _ = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    link.client.zadd(link.keys.popularity, {"m1": 5, "../etc": 9})
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    link.client.hset(link.keys.placement_rates, "other", "not json")
    agent.tick()
    assert sorted(Assignment.from_json(link.client.get(link.keys.placement)).models) == ["m1"]
    before = entries(lb)
    assert len(before) == 16
    # Someone writes junk as the placement: the agent neither crashes nor clears the map. As
    # leader it publishes a valid placement again.
    link.client.set(link.keys.placement, "{not json")
    link.client.set(link.keys.placement_leader, "someone-else")
    agent.tick()
    assert entries(lb) == before
    link.client.delete(link.keys.placement_leader)
    agent.tick()
    assert Assignment.from_json(link.client.get(link.keys.placement)).models.keys() == {"m1"}


def test_a_model_on_a_node_haproxy_does_not_know_stays_on_the_ring(
    lb: HAProxy, link: Link, members: Membership
) -> None:
    a, _ = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "known", a)
    beat(members, "stranger", free_port())
    link.client.zadd(link.keys.popularity, {f"m{i}": 1 for i in range(4)})
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    agent.tick()
    placed = Assignment.from_json(link.client.get(link.keys.placement))
    on_known = {m for m in placed.models if placed.nodes_of(m) == ["known"]}
    assert on_known and len(on_known) < 4
    assert {key.split("/")[0] for key in entries(lb)} == on_known


def test_a_restarted_haproxy_gets_the_placement_again(link: Link, members: Membership) -> None:
    require_binary("haproxy", INSTALL)
    port = free_port()
    beat(members, "n", port)
    link.client.zadd(link.keys.popularity, {"m": 1})
    with HAProxy([f"127.0.0.1:{port}"], free_port()) as first:
        agent = PlacementAgent(link, RuntimeAPI(str(first.runtime_api)), "agent")
        agent.tick()
        assert len(entries(first)) == 16
    with HAProxy([f"127.0.0.1:{port}"], free_port()) as second:
        agent.api = RuntimeAPI(str(second.runtime_api))
        assert entries(second) == {}
        agent.tick()  # same generation, but the map lost its entries
        assert len(entries(second)) == 16


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8000, True),
        ("modelcache-node-0.modelcache-node-pods.modelcache.svc.cluster.local", 8000, True),
        ("modelcache-node-0", 8000, True),
        ("modelcache-node-1", 8000, False),
        ("127.0.0.1", 8001, False),
    ],
)
def test_a_heartbeat_url_names_the_server_by_address_or_dns_name(
    host: str, port: int, expected: bool
) -> None:
    server = Server(
        "node1", "127.0.0.1", 8000, "modelcache-node-0.modelcache-node-pods.modelcache.svc.cluster.local"
    )
    assert server.is_at(host, port) is expected


def test_rates_reported_by_every_agent_add_up(lb: HAProxy, link: Link, members: Membership) -> None:
    a, b = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    beat(members, "nb", b)
    link.client.zadd(link.keys.popularity, {"hot": 1, "c1": 1, "c2": 1})
    now = __import__("time").time()
    report = {"ts": now, "rates": {"hot": 50, "c1": 5}}
    link.client.hset(link.keys.placement_rates, mapping={"x": json.dumps(report), "y": json.dumps(report)})
    stale = {"ts": now - 3600, "rates": {"c2": 1000}}
    link.client.hset(link.keys.placement_rates, "old", json.dumps(stale))
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    models = {m.name: m.rate for m in agent._models(agent.members.heartbeats())}
    assert models == {"hot": 100.0, "c1": 10.0, "c2": 0.0}


def test_a_placement_that_starts_again_at_generation_one_is_applied(
    lb: HAProxy, link: Link, members: Membership
) -> None:
    """Redis lost its data: generations restart, so the agent compares what it wrote, not numbers."""
    a, b = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    beat(members, "nb", b)
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    link.client.set(link.keys.placement_leader, "someone-else")
    link.client.set(link.keys.placement, Assignment({"m": (("na", 16),)}, 1).to_json())
    agent.tick()
    assert set(entries(lb).values()) == {"place_node1"}
    link.client.set(link.keys.placement, Assignment({"m": (("nb", 16),)}, 1).to_json())
    agent.tick()
    assert set(entries(lb).values()) == {"place_node2"}


def maintained(lb: HAProxy) -> list[str]:
    """Servers of backend `nodes` an operator (or an injected command) put in maintenance."""
    [text] = RuntimeAPI(str(lb.runtime_api)).run(["show servers state nodes"])
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [f[3] for f in rows if len(f) > 5 and f[1] == "nodes" and f[5] != "0"]


@pytest.mark.parametrize(
    "name",
    ["m1\nset server nodes/node1 state maint\nx", "a b", "m1/0 place_node2", "x" * 300],
)
def test_a_junk_model_name_in_the_placement_never_reaches_the_runtime_api(
    lb: HAProxy, link: Link, members: Membership, name: str
) -> None:
    # Every agent turns the published names into runtime API lines: a newline would be a command.
    a, _ = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    link.client.set(link.keys.placement_leader, "someone-else")
    good = {"generation": 1, "slots": 16, "models": {"m1": [["na", 16]]}}
    link.client.set(link.keys.placement, json.dumps(good))
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    agent.tick()
    before = entries(lb)
    bad = {"generation": 2, "slots": 16, "models": {name: [["na", 16]], "m1": [["na", 16]]}}
    link.client.set(link.keys.placement, json.dumps(bad))
    agent.tick()
    assert maintained(lb) == []
    assert entries(lb) == before


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("placement", None, '{"generation": 1, "slots": 16, "models": {"m1": 5}}'),
        ("placement", None, "[" * 100_000),
        ("placement_rates", "other", "[" * 100_000),
        ("placement_rates", "other", '{"ts": 1e300, "rates": {"m1": 1e308}}'),
        ("placement_sizes", "m1", "\u00b2"),  # '²'.isdigit() is true, int('²') fails
        ("placement_sizes", "m1", "9" * 5000),  # past Python's int-from-string limit
        ("placement_sizes", "m1", "9" * 400),  # an int too large for a float
    ],
)
def test_junk_in_a_key_the_agent_reads_does_not_stop_the_placement(
    lb: HAProxy, link: Link, members: Membership, key: str, field: str | None, value: str
) -> None:
    a, b = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    beat(members, "nb", b)
    link.client.zadd(link.keys.popularity, {"m1": 5, "m2": 3, "m3": 1})
    name = getattr(link.keys, key)
    if field is None:
        link.client.set(name, value)
    else:
        link.client.hset(name, field, value)
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent", clock=lambda: 1e300)
    agent.tick()
    assert sorted(Assignment.from_json(link.client.get(link.keys.placement)).models) == ["m1", "m2", "m3"]
    assert len(entries(lb)) == 3 * 16


def test_a_leader_whose_lock_expired_mid_round_does_not_overwrite_the_new_leaders_placement(
    lb: HAProxy, link: Link, members: Membership
) -> None:
    a, b = lb.node_ports  # type: ignore[attr-defined]
    beat(members, "na", a)
    beat(members, "nb", b)
    link.client.zadd(link.keys.popularity, {"m1": 5, "m2": 3})
    slow = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "slow")
    other = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "other")
    read_models = slow._models

    def stalled(beats: list[Heartbeat]) -> list:
        models = read_models(beats)  # `slow` has read the world; then it stalls past its lock's TTL
        link.client.zadd(link.keys.popularity, {"m3": 9})
        link.client.delete(link.keys.placement_leader)
        other.tick()  # the new leader publishes what it sees now
        assert other.leader
        return models

    slow._models = stalled  # type: ignore[method-assign]
    slow.tick()
    assert sorted(Assignment.from_json(link.client.get(link.keys.placement)).models) == ["m1", "m2", "m3"]


def test_an_agent_reports_only_valid_names_and_the_busiest_few(
    lb: HAProxy, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stick table keys are what clients put in their paths: thousands of junk names must not
    # make every agent write (and the leader parse) all of them every round.
    monkeypatch.setattr(lbagent, "MAX_MODELS", 5)
    names = [f"junk{i}" for i in range(12)] + ["bad%20name", "..%2Fetc"]
    with httpx.Client(base_url=f"http://127.0.0.1:{lb.port}", timeout=5) as client:
        for i, name in enumerate(names):
            for _ in range(1 + (i < 3)):  # junk0..2 twice: the busiest
                client.post(f"/api/v1/models/{name}/predict", json={"features": [1]})
    agent = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), "agent")
    agent.tick()
    report = json.loads(link.client.hget(link.keys.placement_rates, "agent"))
    assert len(report["rates"]) == 5 and {"junk0", "junk1", "junk2"} <= set(report["rates"])
    assert all(name.startswith("junk") for name in report["rates"])
