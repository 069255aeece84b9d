"""A modelcache cluster across network namespaces: Redis, an object store, three nodes and HAProxy.

    redis 10.77.0.2:6379   lb 10.77.0.3:8080   client 10.77.0.4   store 10.77.0.5:5000
    node1..3 10.77.0.11..13:8000

The registry is `s3://` in the store (moto's S3 server), published from the client
namespace (tests/system/netns_publish.py); each node keeps its own disk tier.

Every node listens on port 8000 of its own address, as on separate machines. The test
process reaches the load balancer and each node through Unix sockets that a relay in
the client namespace forwards (tests/system/uds_relay.py), so a cut between two hosts
never cuts the test off from either of them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from coordinator.haproxy_process import find_haproxy
from coordinator.lb import render
from coordinator.redis_server import find_redis_server
from testkit.s3_server import CREDENTIALS
from tests.conftest import CLUSTER_TOKEN
from tests.system.netns import Topology, wait_for_files

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"redis": 2, "lb": 3, "client": 4, "store": 5, "node1": 11, "node2": 12, "node3": 13}
NODES = ("node1", "node2", "node3")
NODE_PORT, LB_PORT, REDIS_PORT, STORE_PORT = 8000, 8080, 6379, 5000
REGISTRY = "s3://models/partition"
PUBLISH_TIMEOUT_S = 90.0
MAX_BODY_BYTES = 1_048_576
LIFETIME_S = 600.0
"""The relay exits after this long whatever happens (a bound on a leak if the test is killed)."""


class NetCluster:
    """Starts everything inside a Topology; the Topology's close() stops it all by PID."""

    def __init__(self, topology: Topology, logs: Path) -> None:
        self.net, self.logs = topology, logs
        # Unix socket paths are limited to ~108 bytes: pytest's tmp_path can be longer.
        self.sockets = Path(tempfile.mkdtemp(prefix="mc-relay-", dir="/tmp"))
        self.clients: dict[str, httpx.Client] = {}

    @property
    def redis_url(self) -> str:
        return f"redis://{self.net.address('redis')}:{REDIS_PORT}/0"

    @property
    def store_address(self) -> str:
        return f"{self.net.address('store')}:{STORE_PORT}"

    def store_env(self) -> dict[str, str]:
        """What points a client (node, publisher) at the store: the standard AWS variables."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{self.store_address}"}

    def start_store(self, artifacts: list[tuple[Path, str, str]]) -> None:
        """moto's S3 server on the store host, then `artifacts` (path, model type, version) in it."""
        self.net.run(
            "store",
            [sys.executable, "-m", "moto.server", "-H", self.net.address("store"), "-p", str(STORE_PORT)],
            self.logs / "store.log",
            CREDENTIALS,
        )
        specs = [f"{path}:{model_type}:{version}" for path, model_type, version in artifacts]
        argv = [
            sys.executable,
            "-m",
            "tests.system.netns_publish",
            "--endpoint",
            f"http://{self.store_address}",
        ]
        publisher = self.net.run(
            "client", [*argv, REGISTRY, *specs], self.logs / "publish.log", self.store_env(), REPO
        )
        try:
            code = publisher.wait(PUBLISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            raise RuntimeError(f"publishing into the store failed ({code})\n{self.log_tails()}")
        # Done: only servers stay on the list that close() stops and wait_ready() watches.
        self.net.processes.remove(publisher)

    def upstream(self, node: str) -> str:
        """What HAProxy puts in X-Modelcache-Upstream for a response from `node`."""
        return f"{self.net.address(node)}:{NODE_PORT}"

    def start(self, **node_env: str) -> NetCluster:
        self.net.run(
            "redis",
            [find_redis_server(), "--port", str(REDIS_PORT), "--bind", self.net.address("redis"),
             "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(self.logs),
             "--daemonize", "no", "--loglevel", "warning"],
            self.logs / "redis.log",
        )  # fmt: skip
        for node in NODES:
            env = {
                **self.store_env(),
                "MODELCACHE_REGISTRY": REGISTRY,
                "MODELCACHE_LOCAL_CACHE_DIR": str(self.logs / f"{node}-tier"),
                "MODELCACHE_REDIS_URL": self.redis_url,
                "MODELCACHE_NODE_ID": node,
                "MODELCACHE_ADMIN_TOKEN": CLUSTER_TOKEN,
                "MODELCACHE_LOG_LEVEL": "info",
                **node_env,
            }
            argv = [sys.executable, "-m", "node", "--host", self.net.address(node), "--port", str(NODE_PORT)]
            self.net.run(node, argv, self.logs / f"{node}.log", env, cwd=REPO)
        conf = self.logs / "haproxy.cfg"
        servers = [self.upstream(node) for node in NODES]
        conf.write_text(render(servers, f"{self.net.address('lb')}:{LB_PORT}", MAX_BODY_BYTES, threads=1))
        haproxy = find_haproxy()
        assert haproxy is not None, "the caller checks for haproxy (require_binary)"
        self.net.run("lb", [haproxy, "-db", "-f", str(conf)], self.logs / "haproxy.log")
        targets = {"lb": f"{self.net.address('lb')}:{LB_PORT}"}
        targets |= {node: self.upstream(node) for node in NODES}
        mappings = [f"{self.sockets / name}.sock={address}" for name, address in targets.items()]
        relay = self.net.run(
            "client",
            [sys.executable, "-m", "tests.system.uds_relay", "--max-seconds", str(LIFETIME_S), *mappings],
            self.logs / "relay.log",
            cwd=REPO,
        )
        wait_for_files([self.sockets / f"{name}.sock" for name in targets], relay)
        for name in targets:
            self.clients[name] = self.client(name)
        return self

    def client(self, host: str, timeout: float = 15.0) -> httpx.Client:
        """A new HTTP client for the load balancer ("lb") or one node, through the relay."""
        transport = httpx.HTTPTransport(uds=str(self.sockets / f"{host}.sock"))
        return httpx.Client(transport=transport, base_url=f"http://{host}", timeout=timeout, trust_env=False)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every node ready and connected to Redis, and the load balancer answering."""
        deadline = time.monotonic() + timeout
        pending = [*NODES, "lb"]
        while pending and time.monotonic() < deadline:
            for proc in self.net.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited with {proc.returncode}\n{self.log_tails()}")
            host = pending[0]
            try:
                ok = (
                    self.clients[host].get("/healthz", timeout=2).status_code == 200
                    if host == "lb"
                    else self.clients[host].get("/readyz", timeout=2).status_code == 200
                    and self.metric(host, "modelcache_redis_connected") == 1
                )
            except httpx.HTTPError:
                ok = False
            if ok:
                pending.pop(0)
            else:
                time.sleep(0.1)
        if pending:
            raise TimeoutError(f"not ready within {timeout}s: {pending}\n{self.log_tails()}")

    def metric(self, node: str, name: str, **labels: str) -> float | None:
        text = self.clients[node].get("/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def serving(self, node: str, model_type: str, features: list[float]) -> str:
        """The version `node` (a node, or "lb" for the load balancer) predicts `model_type` with."""
        r = self.clients[node].post(f"/api/v1/models/{model_type}/predict", json={"features": features})
        assert r.status_code == 200, f"{node}: {r.status_code} {r.text}"
        return str(r.json()["version"])

    def admin_put(self, node: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
        r = self.clients[node].put(path, json=body, headers=headers)
        assert r.status_code == 200, f"{node} PUT {path}: {r.status_code} {r.text}"
        return r.json()

    def log_tails(self, chars: int = 1500) -> str:
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            tails.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(tails)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        for sock in self.sockets.glob("*.sock"):
            sock.unlink(missing_ok=True)
        self.sockets.rmdir()
