"""The HAProxy load balancer: render its config from the one template, run it on loopback.

One template (`templates/haproxy.cfg.template`), three renderings: `modelcache up`
(static loopback servers, one thread), docker compose (`deploy/haproxy/haproxy.cfg`,
servers by service name, re-resolved through Docker's DNS) and Kubernetes
(`deploy/k8s/lb-config.yaml`, a ConfigMap whose servers come from the node pods' headless
Service by DNS). Routing is explained in the template.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from coordinator.processes import stop_process

TEMPLATE = Path(__file__).parent / "templates" / "haproxy.cfg.template"
BALANCE_FACTOR = 200
"""Hot models (backend nodes_hot): no node takes more than 200% of the mean in-flight hot
requests, i.e. with 3 nodes a hot model's home keeps up to 2/3 of them and the overflow
goes to the next node on the ring: one extra copy, not one per node (125 put the hot
model on all 3 nodes, 4 models in two 3-slot caches: hit rate 0.85). 0: plain consistent
hashing for every model."""

_HOT_ONLY = "    acl hot_model var(txn.hot) -m int gt 0"
_ALL_BOUNDED = "    acl hot_model var(txn.model) -m found  # hot_only=False: every model is bounded"
INSTALL = "install haproxy >= 2.6 (Debian: apt-get install haproxy)"

COMPOSE_SERVERS = tuple(f"node{i}:8000" for i in (1, 2, 3))
K8S_NAMESPACE = "modelcache"
K8S_NODES = f"modelcache-node-pods.{K8S_NAMESPACE}.svc.cluster.local:8000"
"""The node pods' headless Service: its DNS answer is one A record per ready pod."""
K8S_SLOTS = 12
"""Server slots filled from DNS: the node HorizontalPodAutoscaler's maxReplicas."""

GRPC_MODEL_HEADER = "x-modelcache-model"
"""gRPC metadata a client may set to the model's name: the gRPC frontend's affinity key."""

_GRPC = """
# gRPC (the Open Inference Protocol, node/grpc): HTTP/2 cleartext in and out, balanced per
# call (not per connection). The model's name is inside the protobuf body, which HAProxy
# cannot read, so the client names it in the `x-modelcache-model` metadata: hashed onto the
# same consistent ring as the REST backend (same servers in the same order, same hash, same
# key), a model's gRPC calls go to its REST home node and find it cached. A call without
# that metadata is balanced round robin, as a REST request without a model in its path is.
frontend modelcache_grpc
    bind {listen} proto h2
    default_backend nodes_grpc

backend nodes_grpc
    balance hdr(x-modelcache-model)
    hash-type consistent sdbm avalanche
    # Each node's gRPC server follows its REST health check (one check per node).
    http-response set-header X-Modelcache-Upstream %si:%sp
{servers}
"""

_RESOLVERS = """
resolvers dns
    parse-resolv-conf
    hold valid 10s
"""


def render(
    servers: Sequence[str],
    listen: str,
    max_body_bytes: int,
    *,
    balance_factor: int = BALANCE_FACTOR,
    hot_only: bool = True,
    threads: int | None = None,
    resolve: bool = False,
    dns_slots: tuple[str, int] | None = None,
    grpc: tuple[str, Sequence[str]] | None = None,
) -> str:
    """The HAProxy config for `servers` (host:port).

    `grpc=(listen, grpc_servers)` adds the gRPC frontend: `grpc_servers[i]` is the gRPC
    address of the node at `servers[i]` (static servers only).

    `resolve`: re-resolve server names through the DNS of /etc/resolv.conf (containers,
    where a restarted node comes back with a new address). `dns_slots=(fqdn:port, n)`:
    n server slots filled from one DNS name (Kubernetes) instead of `servers`.
    `balance_factor` bounds the loads of hot models (0: plain consistent hashing for
    all); `hot_only=False` bounds every model's requests (for comparison).
    """
    if balance_factor != 0 and balance_factor <= 100:
        raise ValueError(f"balance factor {balance_factor} must be 0 (off) or above 100 (a percentage)")
    dns = " resolvers dns init-addr last,libc,none" if resolve else ""
    if dns_slots is not None:
        fqdn, slots = dns_slots
        lines = [f"    server-template node 1-{slots} {fqdn} resolvers dns init-addr none"]
        hot_lines = lines
        hot_default = "check inter 1s fall 2 rise 1 "
    else:
        lines = [f"    server node{i} {s}{dns}" for i, s in enumerate(servers, 1)]
        hot_lines = [f"{line} track nodes/node{i}" for i, line in enumerate(lines, 1)]
        hot_default = ""
    if not lines:
        raise ValueError("no servers: give at least one host:port")
    values = {
        "global": f"    nbthread {threads}\n" if threads else "",
        "resolvers": _RESOLVERS if resolve or dns_slots else "",
        "servers": "\n".join(lines),
        "hot_servers": "\n".join(hot_lines),
        "hot_default_server": hot_default,
        "hot_acl": _HOT_ONLY if hot_only else _ALL_BOUNDED,
        "cold_balance_factor": "0",
        "listen": listen,
        "max_body_bytes": str(max_body_bytes),
        "balance_factor": str(balance_factor),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if grpc is not None:
        text += _grpc_section(*grpc, count=len(lines) if dns_slots is None else 0)
    return text


def _grpc_section(listen: str, grpc_servers: Sequence[str], count: int) -> str:
    if count == 0 or len(grpc_servers) != count:
        raise ValueError("the gRPC frontend needs one gRPC address per (static) REST server")
    lines = [f"    server node{i} {s} proto h2 track nodes/node{i}" for i, s in enumerate(grpc_servers, 1)]
    return _GRPC.format(listen=listen, servers="\n".join(lines))


def render_compose(max_body_bytes: int = 1_048_576) -> str:
    """deploy/haproxy/haproxy.cfg: the three compose nodes by service name."""
    return render(COMPOSE_SERVERS, ":8080", max_body_bytes, resolve=True)


def render_k8s(max_body_bytes: int = 1_048_576) -> str:
    """The haproxy.cfg of deploy/k8s/lb.yaml's ConfigMap: node pods from the headless Service."""
    return render((), ":8080", max_body_bytes, dns_slots=(K8S_NODES, K8S_SLOTS))


def render_k8s_configmap(max_body_bytes: int = 1_048_576) -> str:
    """deploy/k8s/lb-config.yaml: the ConfigMap that deploy/k8s/lb.yaml's HAProxy mounts."""
    lines = render_k8s(max_body_bytes).splitlines(True)
    cfg = "".join(f"    {line}" if line.strip() else "\n" for line in lines)
    return (
        "# Generated by `python -m coordinator.lb --k8s > deploy/k8s/lb-config.yaml`: edit\n"
        "# coordinator/templates/haproxy.cfg.template instead.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: modelcache-lb\n"
        f"  namespace: {K8S_NAMESPACE}\n"
        "data:\n"
        "  haproxy.cfg: |\n" + cfg
    )


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


def check_config(binary: str, conf: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c`: parse and validate a config without starting."""
    return subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)


class HAProxy:
    """HAProxy in the foreground on loopback, config in its own temporary directory; stop() ends it by PID."""

    def __init__(
        self,
        servers: Sequence[str],
        port: int,
        max_body_bytes: int = 1_048_576,
        *,
        balance_factor: int = BALANCE_FACTOR,
        hot_only: bool = True,
        grpc: tuple[int, Sequence[str]] | None = None,
    ) -> None:
        """`grpc=(port, grpc_servers)`: also a gRPC frontend on `port` (see `render`)."""
        self.binary = find_haproxy()
        if self.binary is None:
            raise FileNotFoundError(f"haproxy not found: {INSTALL}")
        self.port = port
        self.grpc_port = grpc[0] if grpc is not None else None
        self.run_dir = Path(tempfile.mkdtemp(prefix="modelcache-haproxy-"))
        self.conf = self.run_dir / "haproxy.cfg"
        self.conf.write_text(
            render(
                servers,
                f"127.0.0.1:{port}",
                max_body_bytes,
                balance_factor=balance_factor,
                hot_only=hot_only,
                threads=1,
                grpc=(f"127.0.0.1:{grpc[0]}", grpc[1]) if grpc is not None else None,
            )
        )
        self.log = self.run_dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> HAProxy:
        assert self.binary is not None
        with self.log.open("ab") as out:
            # -db: stay in the foreground, so the PID we hold is HAProxy's.
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.error_log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not answer on {self.url}: {self.error_log()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def error_log(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Print a rendering: `--compose` (deploy/haproxy/haproxy.cfg), `--k8s` (deploy/k8s/lb-config.yaml)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--compose", action="store_true", help="the docker-compose config (node1..node3)")
    group.add_argument("--k8s", action="store_true", help="the Kubernetes ConfigMap")
    group.add_argument("--server", action="append", help="host:port of a node (repeat)")
    parser.add_argument("--listen", default=":8080")
    parser.add_argument("--max-body-bytes", type=int, default=1_048_576)
    parser.add_argument("--balance-factor", type=int, default=BALANCE_FACTOR)
    args = parser.parse_args(argv)
    if args.compose:
        sys.stdout.write(render_compose(args.max_body_bytes))
    elif args.k8s:
        sys.stdout.write(render_k8s_configmap(args.max_body_bytes))
    else:
        sys.stdout.write(
            render(args.server, args.listen, args.max_body_bytes, balance_factor=args.balance_factor)
        )


if __name__ == "__main__":
    main()
