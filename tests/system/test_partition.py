"""Partitions: Redis, an object store, HAProxy and three nodes on their own hosts (network namespaces).

While clients predict through the load balancer without pause:

1. node1 is cut from Redis. It keeps serving, and the load balancer keeps sending it
   traffic (Redis is not on the request path, and readiness does not hang on it); it
   reports `modelcache_redis_connected 0`. A version is pinned through node2's admin
   API: node2 and node3 apply it, node1 cannot know. Healed, node1 converges to the pin
   within seconds.
2. The load balancer is cut from node2: its health checks take node2 out and requests
   go to the other nodes; the ones it had already sent to node2 are repeated on another
   node after its `timeout server`. Healed, node2 gets traffic again.
3. node1 is cut from the object store. The models it holds keep answering through the
   load balancer (in memory), and directly (one evicted to its disk tier); a model it
   must fetch answers a 503 naming the store within seconds. Healed, node1 loads from
   the store again. The 503 is checked on node1 itself: HAProxy does not repeat a 503
   on another node, by design (a node's 503 is its own verdict), so through the load
   balancer a client would see it for the models whose home is node1.

A prediction fails when it gets no 200 or takes longer than CLIENT_TIMEOUT_S. A cut
drops packets silently both ways in the switch (see tests/system/netns.py): each side
sees timeouts, as on a real partition, not the fast errors of a refused connection.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from coordinator.haproxy_process import INSTALL as HAPROXY_INSTALL
from coordinator.lb import render
from tests.helpers import eventually, require_binary, train_booster
from tests.system.netns import Topology, remove_stale_namespaces, require_netns
from tests.system.netns_cluster import HOSTS, NODES, NetCluster

ROW = [0.1, 0.2, 0.3, 0.4]
BATCH = [ROW] * 300
"""~7 KB: HAProxy repeats only requests that fit in one buffer (tune.bufsize, 16 KB by default)."""
MODELS = tuple(f"m{i}" for i in range(8))
"""Enough model names that each node is the home of some on the load balancer's ring."""
PINNED = "m0"
OLD, NEW = "1.0.0", "2.0.0"
SPARE, COLD = "spare", "cold"
"""Models no client of the load balancer asks: SPARE goes to node1's disk tier, COLD is never loaded
before node1 is cut from the store."""
STORE_TIMEOUT_S = 1.0
"""The nodes' MODELCACHE_STORE_TIMEOUT_S (connect and read). A load behind a silent store makes
about four store calls in turn (listing twice, metadata, listing again for a fallback), each
tried twice: with the default 5 s (connect 2 s) the 503 comes after ~16 s, not within seconds."""
STORE_ANSWER_S = 20.0
"""A load that needs the unreachable store fails within this: ~4 calls x 2 attempts x 1 s,
plus the client's retry backoff and a margin for a loaded machine."""


def _lb_server_timeout_s() -> float:
    """The load balancer's `timeout server`: how long it waits on a silent node before repeating."""
    found = re.search(r"^\s*timeout server (\d+)(ms|s)\s*$", render(["n:1"], ":1", 1024), re.MULTILINE)
    assert found, "the HAProxy template has no `timeout server <n>s|ms` line: update this test"
    return float(found[1]) / (1000 if found[2] == "ms" else 1)


LB_SERVER_TIMEOUT_S = _lb_server_timeout_s()
CLIENT_TIMEOUT_S = LB_SERVER_TIMEOUT_S + 5
"""A prediction slower than this failed: the load balancer gives up on a silent node after its
`timeout server` and repeats the request elsewhere, which takes milliseconds."""
HOLD_CUT_S = CLIENT_TIMEOUT_S + 2
"""Long enough that a request stuck behind the cut fails, instead of being rescued by the heal."""


@dataclass
class Outcome:
    started: float
    model_type: str
    upstream: str = ""
    error: str = ""
    seconds: float = 0.0


@dataclass
class Load:
    """Clients predicting through the load balancer until stopped (bounded in count and time).

    Records when each request started and which node answered (HAProxy's X-Modelcache-Upstream).
    """

    cluster: NetCluster
    max_requests: int = 40_000
    max_seconds: float = 120.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 2, models: tuple[str, ...] = MODELS, batch: bool = False) -> Load:
        for i in range(clients):
            thread = threading.Thread(target=self._run, args=(i, models, batch), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, offset: int, models: tuple[str, ...], batch: bool) -> None:
        deadline = time.monotonic() + self.max_seconds
        route, body = ("batch_predict", {"instances": BATCH}) if batch else ("predict", {"features": ROW})
        with self.cluster.client("lb", timeout=CLIENT_TIMEOUT_S) as client:
            i = offset
            while not self._stop.is_set() and len(self.outcomes) < self.max_requests:
                if time.monotonic() > deadline:
                    return
                outcome = Outcome(time.monotonic(), models[i % len(models)])
                try:
                    r = client.post(f"/api/v1/models/{outcome.model_type}/{route}", json=body)
                    outcome.upstream = r.headers.get("x-modelcache-upstream", "")
                    if r.status_code != 200:
                        outcome.error = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                outcome.seconds = time.monotonic() - outcome.started
                self.outcomes.append(outcome)
                i += 1

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.error]

    def served(self, node: str, since: float) -> int:
        """Predictions `node` answered that started after `since` (monotonic)."""
        upstream = self.cluster.upstream(node)
        return sum(
            1 for o in list(self.outcomes) if o.started >= since and o.upstream == upstream and not o.error
        )

    def homes(self, node: str) -> tuple[str, ...]:
        """The models `node` answered so far."""
        upstream = self.cluster.upstream(node)
        return tuple(sorted({o.model_type for o in list(self.outcomes) if o.upstream == upstream}))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 5)


def _artifacts(workdir: Path) -> list[tuple[Path, str, str]]:
    """Two versions of every model in MODELS, one of SPARE and COLD: (file, model type, version)."""
    artifacts = []
    versions = [(m, v) for m in MODELS for v in (OLD, NEW)] + [(SPARE, OLD), (COLD, OLD)]
    for model_type, version in versions:
        path = workdir / f"{model_type}-{version}.ubj"
        train_booster(0 if version == OLD else 1).save_model(path)
        artifacts.append((path, model_type, version))
    return artifacts


@pytest.fixture(scope="module")
def net_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCluster]:
    """One cluster across namespaces for the module's tests (starting one costs ~15 s here)."""
    require_netns()
    require_binary("haproxy", HAPROXY_INSTALL)
    remove_stale_namespaces()
    workdir = tmp_path_factory.mktemp("partition")
    artifacts = _artifacts(workdir)
    logs = workdir / "logs"
    logs.mkdir()
    topology = Topology(HOSTS)
    cluster = NetCluster(topology, logs)
    try:
        topology.build()
        cluster.start_store(artifacts)
        cluster.start(
            MODELCACHE_RECONCILE_INTERVAL_S="1",
            MODELCACHE_HEARTBEAT_S="0.5",
            MODELCACHE_LOAD_RETRIES="1",
            MODELCACHE_LOAD_FAILURE_TTL_S="0",
            MODELCACHE_STORE_TIMEOUT_S=str(STORE_TIMEOUT_S),
            MODELCACHE_CACHE_SIZE=str(len(MODELS)),
        )
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.close()
        topology.close()


def _describe(outcomes: list[Outcome], since: float) -> list[str]:
    return [
        f"+{o.started - since:.2f}s {o.model_type} via {o.upstream or '?'} "
        f"in {o.seconds:.1f}s: {o.error or 'ok'}"
        for o in outcomes[:10]
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_node_cut_from_redis_keeps_serving_and_converges_when_healed(net_cluster: NetCluster) -> None:
    cluster, net = net_cluster, net_cluster.net
    assert [cluster.serving(node, PINNED, ROW) for node in NODES] == [NEW] * 3
    load = Load(cluster).start()
    start = time.monotonic()
    try:
        assert eventually(lambda: all(load.served(n, start) > 0 for n in NODES), timeout=15), (
            "a node got no traffic"
        )

        net.cut("node1", "redis")
        assert eventually(lambda: cluster.metric("node1", "modelcache_redis_connected") == 0, timeout=15)
        cut_seen = time.monotonic()
        answer = cluster.admin_put("node2", f"/api/v1/pins/{PINNED}", {"version": OLD})
        assert answer["ok"], answer
        assert eventually(lambda: [cluster.serving(n, PINNED, ROW) for n in ("node2", "node3")] == [OLD] * 2)
        assert eventually(lambda: load.served("node1", cut_seen) > 20, timeout=10), "node1 left the rotation"
        # node1 cannot know of the pin yet: the partition is real.
        assert cluster.serving("node1", PINNED, ROW) == NEW
        assert cluster.metric("node1", "modelcache_redis_connected") == 0

        net.heal("node1", "redis")
        assert eventually(lambda: cluster.serving("node1", PINNED, ROW) == OLD, timeout=20), (
            cluster.log_tails()
        )
        assert eventually(lambda: cluster.metric("node1", "modelcache_redis_connected") == 1, timeout=10)
    finally:
        load.stop()

    assert load.failures == [], _describe(load.failures, start)
    assert len(load.outcomes) > 100
    # Every node converged: the pin everywhere, through the load balancer too, all connected.
    assert [cluster.serving(node, PINNED, ROW) for node in NODES] == [OLD] * 3
    assert cluster.serving("lb", PINNED, ROW) == OLD
    assert [cluster.metric(node, "modelcache_redis_connected") for node in NODES] == [1.0] * 3


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_load_balancer_cut_from_a_node_routes_around_it(net_cluster: NetCluster) -> None:
    cluster, net = net_cluster, net_cluster.net
    load = Load(cluster).start()
    start = time.monotonic()
    try:
        assert eventually(lambda: all(load.served(n, start) > 0 for n in NODES), timeout=15), (
            "a node got no traffic"
        )
        # A client that only asks node2's models, in batches that keep node2 busy: requests are
        # surely on the wire to node2 when the cut comes.
        node2_models = load.homes("node2")
        assert node2_models, "node2 is the home of none of the models"
        busy = Load(cluster).start(clients=1, models=node2_models, batch=True)
        try:
            assert eventually(lambda: busy.served("node2", start) > 3, timeout=10)
            net.cut("lb", "node2")
            cut_at = time.monotonic()

            def node2_left() -> bool:
                # node2 answered nothing started in the last 2 s while the others answered plenty.
                recent = time.monotonic() - 2.0
                others = sum(load.served(n, recent) for n in ("node1", "node3"))
                return recent > cut_at and load.served("node2", recent) == 0 and others > 20

            assert eventually(node2_left, timeout=20), "the load balancer kept sending to node2"
            time.sleep(max(0.0, cut_at + HOLD_CUT_S - time.monotonic()))
            assert busy.served("node1", cut_at) + busy.served("node3", cut_at) > 0, (
                "node2's models went nowhere"
            )
            net.heal("lb", "node2")
            healed = time.monotonic()
            assert eventually(lambda: load.served("node2", healed) > 0, timeout=15), (
                "node2 got no traffic back"
            )
        finally:
            busy.stop()
    finally:
        load.stop()

    assert len(load.outcomes) > 100
    assert [cluster.clients[node].get("/readyz").status_code for node in NODES] == [200] * 3
    failures = load.failures + busy.failures
    assert failures == [], _describe(failures, cut_at)
    # Not vacuous: requests were on the wire to node2 when it went silent (the busy client
    # sees to that), waited out the load balancer's server timeout and were answered by another.
    repeated = [o for o in load.outcomes + busy.outcomes if o.seconds >= LB_SERVER_TIMEOUT_S]
    assert repeated, "no request was held by node2 after the cut"
    assert all(o.upstream not in ("", cluster.upstream("node2")) for o in repeated), _describe(
        repeated, cut_at
    )


def _predict(cluster: NetCluster, node: str, model_type: str) -> httpx.Response:
    return cluster.clients[node].post(f"/api/v1/models/{model_type}/predict", json={"features": ROW})


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_node_cut_from_the_store_serves_what_it_holds_and_fetches_again_when_healed(
    net_cluster: NetCluster,
) -> None:
    cluster, net = net_cluster, net_cluster.net
    # SPARE first, then every model in MODELS: with one slot per model in MODELS, SPARE is
    # the least recently used and leaves memory, kept only on node1's disk tier.
    assert _predict(cluster, "node1", SPARE).status_code == 200
    for model_type in MODELS:
        assert _predict(cluster, "node1", model_type).status_code == 200
    probe = Load(cluster).start()
    start = time.monotonic()
    try:
        assert eventually(lambda: probe.served("node1", start) > 5, timeout=15), "node1 got no traffic"
    finally:
        probe.stop()
    node1_models = probe.homes("node1")
    downloaded = cluster.metric("node1", "modelcache_store_bytes_total", direction="download") or 0

    net.cut("node1", "store")
    cut_at = time.monotonic()
    load = Load(cluster).start(models=node1_models)
    try:
        asked = time.monotonic()
        with cluster.client("node1", timeout=STORE_ANSWER_S + 10) as patient:
            needs_store = patient.post(f"/api/v1/models/{COLD}/predict", json={"features": ROW})
        took = time.monotonic() - asked
        assert needs_store.status_code == 503, needs_store.text
        assert took < STORE_ANSWER_S, f"a load that needs the store took {took:.1f}s"
        message = needs_store.json()["error"]
        assert "object store" in message and cluster.store_address in message, message
        from_disk = _predict(cluster, "node1", SPARE)
        assert from_disk.status_code == 200, from_disk.text
        assert from_disk.json()["cached"] is False, "SPARE was still in memory: the disk tier went untested"
        assert (cluster.metric("node1", "modelcache_disk_tier_hits_total") or 0) >= 1
        assert cluster.clients["node1"].get("/readyz").status_code == 200
        assert eventually(lambda: load.served("node1", cut_at) > 20, timeout=10), "node1 left the rotation"

        net.heal("node1", "store")
        assert eventually(lambda: _predict(cluster, "node1", COLD).status_code == 200, timeout=20), (
            cluster.log_tails()
        )
    finally:
        load.stop()

    assert load.failures == [], _describe(load.failures, cut_at)
    after = cluster.metric("node1", "modelcache_store_bytes_total", direction="download") or 0
    assert after > downloaded, "node1 answered COLD without fetching it from the store"
