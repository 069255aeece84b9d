"""`modelcache up`: a whole local deployment in one command, stopped with Ctrl-C."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape

from coordinator.errors import ModelCacheError
from coordinator.haproxy_api import RuntimeAPI
from coordinator.haproxy_process import INSTALL, HAProxy, find_haproxy
from coordinator.lbagent import PlacementAgent
from coordinator.link import Link
from coordinator.processes import port_free, stop_process
from coordinator.redis_url import redact
from coordinator.registry import AnyRegistry, Registry, open_registry

console = Console(highlight=False, soft_wrap=True)


def _error(message: str) -> None:
    """`error: message` in red; the message's own brackets (`modelcache[local]`) are text, not markup."""
    console.print(f"[red]error:[/] {escape(message)}")


# `up --port B` opens every port in [B, B + PORT_SPAN), so two local clusters whose bases
# are PORT_SPAN apart never collide: nodes from B, their gRPC ports from B+50, then Redis
# and the load balancer (REST, gRPC) at fixed offsets (B=8000 keeps the load balancer on
# the documented 8080, and each node's gRPC port is its REST port + 50, the node's default).
PORT_SPAN = 100
GRPC_OFFSET = 50
REDIS_OFFSET = 79
LB_OFFSET = 80
LB_GRPC_OFFSET = 81
MAX_NODES = REDIS_OFFSET - GRPC_OFFSET  # 29: node i's gRPC port B+50+i stays below Redis's


@dataclass(frozen=True)
class Ports:
    """The ports one `modelcache up` opens, all derived from its base port."""

    nodes: list[int]
    redis: int | None
    lb: int | None
    grpc: list[int] = field(default_factory=list)
    """Node i's gRPC port (B+50+i)."""
    lb_grpc: int | None = None
    """The load balancer's gRPC frontend (B+81)."""

    @classmethod
    def plan(cls, base: int, nodes: int, embedded_redis: bool, lb: bool, lb_port: int | None) -> Ports:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be between 1 and {MAX_NODES}")
        if not 1024 <= base <= 65535 - PORT_SPAN:
            raise ValueError(f"--port must be between 1024 and {65535 - PORT_SPAN}")
        return cls(
            nodes=[base + i for i in range(nodes)],
            redis=base + REDIS_OFFSET if embedded_redis else None,
            lb=(lb_port or base + LB_OFFSET) if lb else None,
            grpc=[base + GRPC_OFFSET + i for i in range(nodes)],
            lb_grpc=base + LB_GRPC_OFFSET if lb else None,
        )

    def all(self) -> list[int]:
        fixed = (self.redis, self.lb, self.lb_grpc)
        return [*self.nodes, *self.grpc, *(p for p in fixed if p is not None)]


@dataclass
class Stack:
    """Processes `up` started, stopped in reverse order (by PID, never by name)."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append((name, proc))

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            stop_process(proc)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f}s")


def start_node(
    port: int,
    host: str,
    registry: str,
    token: str,
    redis_url: str | None,
    prefix: str,
    log_dir: Path,
    grpc_port: int | None = None,
    state_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MODELCACHE_GRPC_PORT": str(grpc_port or 0),
        "MODELCACHE_REGISTRY": str(registry),
        "MODELCACHE_ADMIN_TOKEN": token,
        "MODELCACHE_NODE_ID": f"node-{port}",
        "MODELCACHE_REDIS_PREFIX": prefix,
    }
    if redis_url:
        env["MODELCACHE_REDIS_URL"] = redis_url
    if state_dir is not None:
        # One directory for all: each node's file is named after its id (node-PORT), so a
        # node started again on the same port restores what it held (node/restore.py).
        env["MODELCACHE_STATE_DIR"] = str(state_dir)
    log = (log_dir / f"node-{port}.log").open("ab")
    return subprocess.Popen(
        # -P: never let a `node/` folder in the current directory shadow the installed package.
        [sys.executable, "-P", "-m", "node", "--host", host, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches `up`, which stops the nodes in order
    )


def run_up(args: argparse.Namespace) -> int:
    # A directory or an object store (s3://bucket/prefix, credentials from the AWS variables,
    # which the nodes inherit): never a local directory named "s3:".
    registry = open_registry(args.registry)
    if isinstance(registry, Registry):
        registry.root.mkdir(parents=True, exist_ok=True)
    if not registry.model_types():
        from coordinator.demo import publish_demo_models

        console.print(f"registry {registry.location} is empty: publishing demo models")
        publish_demo_models(
            registry,
            progress=lambda spec, i, n: console.print(f"  [{i + 1}/{n}] {spec.model_type} {spec.version}"),
        )
    try:
        with_lb = not args.no_lb and find_haproxy() is not None
        plan = Ports.plan(args.port, args.nodes, not args.redis_url, with_lb, args.lb_port)
    except ValueError as exc:
        _error(str(exc))
        return 2
    # The embedded Redis listens on 127.0.0.1 whatever --host says.
    busy = [p for p in plan.all() if not port_free("127.0.0.1" if p == plan.redis else args.host, p)]
    if busy:
        console.print(
            f"[red]error:[/] port(s) {busy} already in use; pass --port to pick another range "
            f"(up opens ports {args.port}-{args.port + PORT_SPAN - 1})"
        )
        return 2
    ports = plan.nodes
    token = os.environ.get("MODELCACHE_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    beside = registry.root.resolve().parent if isinstance(registry, Registry) else Path.cwd()
    log_dir = Path(os.environ.get("MODELCACHE_LOG_DIR", beside / ".modelcache-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    lb = None
    agent_stop: threading.Event | None = None
    try:
        redis_url = args.redis_url
        if not redis_url:
            from coordinator.redis_server import RedisServer, find_redis_server

            console.print(f"starting embedded Redis ({find_redis_server()})")
            redis_server = RedisServer(port=plan.redis, data_dir=log_dir).start()
            assert redis_server.proc is not None
            # In the stack, so its death stops `up` like a node's would (and it is stopped last).
            stack.add("redis", redis_server.proc)
            redis_url = redis_server.url
        console.print(f"redis: {redact(redis_url)}")
        urls = []
        for port, grpc_port in zip(ports, plan.grpc, strict=True):
            proc = start_node(
                port,
                args.host,
                registry.location,
                token,
                redis_url,
                args.redis_prefix,
                log_dir,
                grpc_port,
                args.state_dir,
            )
            stack.add(f"node-{port}", proc)
            urls.append((f"http://{args.host}:{port}", proc))
        for url, proc in urls:
            wait_ready(url, proc)
            console.print(f"node ready: {url}")
        lb = _start_balancer(args, ports, plan)
        entry = lb.url if lb is not None else urls[0][0]
        if lb is not None:
            agent_stop = _start_agent(lb, redis_url, args.redis_prefix)
            note = "HAProxy, models placed on nodes by the cluster (coordinator.placement); use this one"
            console.print(f"load balancer: {lb.url}   ({note})")
            grpc_note = "HTTP/2; affinity by the x-modelcache-model metadata, else round robin"
            console.print(f"load balancer gRPC: {args.host}:{plan.lb_grpc}   ({grpc_note})")
        grpc_urls = [f"{args.host}:{p}" for p in plan.grpc]
        _print_banner(
            entry, [u for u, _ in urls], grpc_urls, token, registry, log_dir, redis_url, args.redis_prefix
        )
        while not stopping:
            dead = stack.dead() + (["haproxy"] if lb is not None and not lb.running() else [])
            if dead:
                console.print(f"[red]stopped unexpectedly:[/] {', '.join(dead)} (logs in {log_dir})")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        _error(f"{exc} (logs in {log_dir})")
        return 1
    except (FileNotFoundError, ModelCacheError) as exc:
        _error(str(exc))
        return 2
    finally:
        console.print("stopping…")
        if agent_stop is not None:
            agent_stop.set()
        if lb is not None:
            lb.stop()
        stack.stop()


def _start_balancer(args: argparse.Namespace, ports: list[int], plan: Ports) -> HAProxy | None:
    if plan.lb is None:
        if not args.no_lb:
            console.print(f"no haproxy on PATH: no load balancer ({INSTALL})")
        return None
    servers = [f"{args.host}:{p}" for p in ports]
    max_body = int(os.environ.get("MODELCACHE_MAX_BODY_BYTES", "1048576"))
    grpc = None if plan.lb_grpc is None else (plan.lb_grpc, [f"{args.host}:{p}" for p in plan.grpc])
    return HAProxy(servers, plan.lb, max_body, grpc=grpc).start()


def _start_agent(lb: HAProxy, redis_url: str, prefix: str) -> threading.Event:
    """The placement agent as a thread of `up` (a sidecar elsewhere): see coordinator.lbagent."""
    link = Link.from_url(redis_url, prefix)
    _, stop = PlacementAgent(link, RuntimeAPI(str(lb.runtime_api)), f"up-{os.getpid()}").start()
    return stop


def _print_banner(
    entry: str,
    urls: list[str],
    grpc_urls: list[str],
    token: str,
    registry: AnyRegistry,
    log_dir: Path,
    redis_url: str,
    prefix: str,
) -> None:
    console.print()
    for url, grpc_url in zip(urls, grpc_urls, strict=True):
        console.print(f"node: {url}")
        console.print(f"node gRPC: {grpc_url}   (Open Inference Protocol)")
    console.print(f"redis: {redact(redis_url)}")
    console.print(f"registry: {registry.location}    logs: {log_dir}")
    console.print(f"admin token: {token}")
    auth = f"-H 'Authorization: Bearer {token}'"
    json_h = "-H 'Content-Type: application/json'"
    body = '{"features": [12, 70.5, 2, 1, null]}'
    console.print("\ntry:")
    console.print(f"  curl -s {entry}/api/v1/models/churn/predict {json_h} -d '{body}'")
    console.print(f"  curl -s {entry}/api/v1/cache/stats")
    reload_body = '{"scope": "cluster", "wait": true}'
    pin_body = '{"version": "1.0.0", "wait": true}'
    console.print(f"  curl -s -X POST {entry}/api/v1/models/reload {auth} {json_h} -d '{reload_body}'")
    console.print(f"  curl -s -X PUT {entry}/api/v1/pins/churn {auth} {json_h} -d '{pin_body}'")
    console.print(f"  curl -s {entry}/api/v1/cluster")
    env = f"MODELCACHE_REDIS_URL={redact(redis_url)}" + (
        f" MODELCACHE_REDIS_PREFIX={prefix}" if prefix != "modelcache:" else ""
    )
    # The command as this shell can run it (a venv's script is not necessarily on PATH).
    cli = sys.argv[0] if Path(sys.argv[0]).name == "modelcache" else f"{sys.executable} -m coordinator.cli"
    console.print(f"  {env} {cli} status")
    console.print(f"  {env} {cli} reload churn --wait")
    console.print(f"  open {entry}/docs for the API reference")
    console.print("\nCtrl-C stops everything.")
