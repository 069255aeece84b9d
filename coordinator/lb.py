"""The HAProxy load balancer's config, rendered from the one template (haproxy_process.py runs it).

One template (`templates/haproxy.cfg.template`), three renderings: `modelcache up`
(static loopback servers, one thread), docker compose (`deploy/haproxy/haproxy.cfg`,
servers by service name, re-resolved through Docker's DNS) and Kubernetes
(`deploy/k8s/lb-config.yaml`, a ConfigMap whose servers are the node StatefulSet's pods by
their stable DNS names, with a public door that serves inference and read-only calls only
and an in-cluster admin door). Routing is explained in the template.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from coordinator.placement import SLOTS

TEMPLATE = Path(__file__).parent / "templates" / "haproxy.cfg.template"
BALANCE_FACTOR = 200
"""Hot models (backend nodes_hot): no node takes more than 200% of the mean in-flight hot
requests, i.e. with 3 nodes a hot model's home keeps up to 2/3 of them and the overflow
goes to the next node on the ring: one extra copy, not one per node (125 put the hot
model on all 3 nodes, 4 models in two 3-slot caches: hit rate 0.85). 0: plain consistent
hashing for every model."""

_HOT_ONLY = "    acl hot_model var(txn.hot) -m int gt 0"
_ALL_BOUNDED = "    acl hot_model var(txn.model) -m found  # hot_only=False: every model is bounded"

COMPOSE_SERVERS = tuple(f"node{i}:8000" for i in (1, 2, 3))
COMPOSE_GRPC_SERVERS = tuple(f"node{i}:8050" for i in (1, 2, 3))
"""The compose nodes' gRPC servers (MODELCACHE_GRPC_PORT's default, HTTP port + 50)."""
COMPOSE_GRPC_PORT = 8081
"""The compose gRPC frontend: the load balancer's port + 1, as `modelcache up` does (base+80, base+81)."""
K8S_NAMESPACE = "modelcache"
K8S_NODE_SET = "modelcache-node"
"""The node StatefulSet: its pods are modelcache-node-0, -1, ... (scale-down removes the highest)."""
K8S_NODE_SERVICE = "modelcache-node-pods"
"""The StatefulSet's headless Service, which gives pod K the name <set>-K.<service>.<namespace>.svc."""
K8S_MAX_NODES = 64
"""Pod names HAProxy resolves: names of pods that do not exist stay in maintenance at no cost
but a DNS query now and then. Decoupled from the autoscaler's maximum (a test keeps it at 4x
or more); beyond it, re-render with `--max-nodes`."""
K8S_PUBLIC_PORT = 8080
K8S_ADMIN_PORT = 8081
K8S_GRPC_PORT = 8082
"""The Kubernetes gRPC frontend: a public door, inference and read-only methods only."""
NODE_GRPC_PORT = 8050
PLACEMENT_MAP = "/dev/null"
"""The placement map HAProxy loads at start: empty, in every container and on every machine. The
agent (coordinator.lbagent) fills it in memory over the runtime API, where it is named by this
path; nothing is written to disk, so a restarted HAProxy starts empty (the hash ring) until its
agent has written the placement again."""
RUNTIME_API_TCP = "127.0.0.1:9999"
"""Compose and Kubernetes: HAProxy's runtime API on the pod's (or shared network namespace's)
loopback, where the agent beside it connects; nothing else can reach it."""
PLACED_FALLBACKS = 4
"""Each per-node placement backend lists its node, then up to 4 others (the next 2 on the
ring and the first ones, which a StatefulSet always runs) for when it is down."""

# Why per-pod names rather than `server-template` slots filled from one DNS name: a slot's
# place on the hash ring comes from its number, and slots are filled in the order DNS answers
# (CoreDNS shuffles it), so two HAProxy replicas would build different rings and give each
# model two homes. Pod K's name is server K on every replica: one ring, however many
# replicas, and a restarted pod comes back to the same place (and the same models).

_MODEL = "[A-Za-z0-9][A-Za-z0-9._-]*"
_VERSION = "[A-Za-z0-9][A-Za-z0-9.+!_-]*"
_PUBLIC_READS = (
    "^/(healthz|readyz)$",
    "^/api/v1/(models|pins|canaries)$",
    f"^/api/v1/models/{_MODEL}/versions/{_VERSION}$",
    "^/v2(/health/(live|ready))?$",
    f"^/v2/models/{_MODEL}(/versions/{_VERSION})?(/ready)?$",
    f"^/v1/models/{_MODEL}$",
)
_PUBLIC_INFERENCE = (
    "^/api/v1/(predict|batch_predict)$",
    f"^/api/v1/models/{_MODEL}/(predict|batch_predict)$",
    f"^/v2/models/{_MODEL}(/versions/{_VERSION})?/infer$",
    f"^/v1/models/{_MODEL}:predict$",
)
_NOT_PUBLIC = (
    '{"error": "not served on the public entry point: admin calls, /metrics, /api/v1/cluster and'
    ' /docs answer inside the cluster only, on the load balancer admin port", "code": "not_public"}'
)

_GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_PUBLIC_METHODS = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
    "RepositoryIndex",
)
"""What a public gRPC door serves: inference and read-only calls (RepositoryIndex lists models,
as the public REST door's /api/v1/models does). Not RepositoryModelLoad/Unload, which are admin
calls: on Kubernetes they go through the REST admin door."""

_GRPC_NOT_PUBLIC = (
    '{"error": "not served on the public gRPC entry point: loading and unloading are admin calls,'
    ' use the REST admin door", "code": "not_public"}'
)

GRPC_MODEL_HEADER = "x-modelcache-model"
"""gRPC metadata a client may set to the model's name: the gRPC frontend's affinity key."""

_GRPC = """
# gRPC (the Open Inference Protocol, node/grpc): HTTP/2 cleartext in and out, balanced per
# call (not per connection). The model's name is inside the protobuf body, which HAProxy
# cannot read, so the client names it in the `x-modelcache-model` metadata: hashed onto the
# same consistent ring as the REST backend (same servers in the same order, same hash, same
# key), a model's gRPC calls go to its REST home node and find it cached. A call without
# that metadata is balanced round robin, as a REST request without a model in its path is.
# A placed model (the REST frontend's map, the same slots) goes to its holder's gRPC server.
frontend modelcache_grpc
    bind {listen} proto h2{public_methods}
    http-request set-var(txn.model) req.hdr(x-modelcache-model)
    acl has_model var(txn.model) -m found
    http-request set-var(txn.slot) rand({slots}) if has_model
    http-request set-var(txn.place) var(txn.model),concat(/,txn.slot),map({placement_map}) if has_model
    use_backend %[var(txn.place),regsub(^place_,place_grpc_)] if {{ var(txn.place) -m found }}
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
K8S_RESOLVERS = """
resolvers dns
    parse-resolv-conf
    hold valid 10s
    # One query per pod name every 5 s (not every 1 s): a new pod is in use within seconds
    # either way, and 64 names stay a light load on the cluster DNS.
    timeout resolve 5s
"""
K8S_DNS_OPTIONS = "init-addr none resolve-prefer ipv4"
"""Names of pods not (yet) running resolve later without delaying start; A records first
(an IPv4 cluster has no AAAA record, and asking for one first doubles the queries)."""


def render(
    servers: Sequence[str],
    listen: str,
    max_body_bytes: int,
    *,
    balance_factor: int = BALANCE_FACTOR,
    hot_only: bool = True,
    threads: int | None = None,
    resolve: bool = False,
    dns_options: str = "init-addr last,libc,none",
    resolvers: str = "",
    admin_listen: str | None = None,
    grpc: tuple[str, Sequence[str]] | None = None,
    grpc_public: bool = False,
    placement_map: str = PLACEMENT_MAP,
    runtime_api: str | None = None,
) -> str:
    """The HAProxy config for `servers` (host:port).

    `placement_map`: the map the agent fills (PLACEMENT_MAP); `runtime_api`: where HAProxy's
    admin-level runtime API listens (a unix socket path, or `ipv4@host:port`), for the agent.

    `grpc=(listen, grpc_servers)` adds the gRPC frontend: `grpc_servers[i]` is the gRPC
    address of the node at `servers[i]`, health following that REST server (`track`), names
    re-resolved like the REST servers' with `resolve`. `grpc_public`: that frontend serves
    inference and read-only methods only (GRPC_PUBLIC_METHODS), like the REST public door.

    `resolve`: re-resolve server names through the DNS of /etc/resolv.conf (containers,
    where a restarted node comes back with a new address), with `dns_options` on each server
    line and `resolvers` (default: _RESOLVERS) as the resolvers section.
    `admin_listen`: a second door that serves every route; the one on `listen` then
    serves inference and read-only calls only (Kubernetes: the Ingress reaches `listen`).
    `balance_factor` bounds the loads of hot models (0: plain consistent hashing for
    all); `hot_only=False` bounds every model's requests (for comparison).
    """
    if balance_factor != 0 and balance_factor <= 100:
        raise ValueError(f"balance factor {balance_factor} must be 0 (off) or above 100 (a percentage)")
    dns = f" resolvers dns {dns_options}" if resolve else ""
    lines = [f"    server node{i} {s}{dns}" for i, s in enumerate(servers, 1)]
    hot_lines = [f"{line} track nodes/node{i}" for i, line in enumerate(lines, 1)]
    if not lines:
        raise ValueError("no servers: give at least one host:port")
    runtime = f"    stats socket {runtime_api} level admin\n" if runtime_api else ""
    values = {
        "global": (f"    nbthread {threads}\n" if threads else "") + runtime,
        "slots": str(SLOTS),
        "placement_map": placement_map,
        "placed_backends": _placed_backends(servers, dns),
        "resolvers": (resolvers or _RESOLVERS) if resolve else "",
        "admin_door": _admin_door(admin_listen) if admin_listen else "",
        "public_routes": _public_routes(admin_listen) if admin_listen else "",
        "servers": "\n".join(lines),
        "hot_servers": "\n".join(hot_lines),
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
        text += _grpc_section(
            *grpc, count=len(lines), dns=dns, public=grpc_public, placement_map=placement_map
        )
    return text


def placed_backend(k: int) -> str:
    """The backend a placement map entry names for server node<k> (1-based); its gRPC twin is
    `place_grpc_node<k>` (the gRPC frontend rewrites the name)."""
    return f"place_node{k}"


def _placed_backends(servers: Sequence[str], dns: str, *, grpc: bool = False) -> str:
    """One backend per node for placed models: that node first, others only while it is down.

    `balance first` sends every request to the lowest-numbered server that is up, and a
    retry (option redispatch) avoids the server that just failed: a placed model's node
    going away costs a retry, not an error, before the health check even notices.
    """
    n = len(servers)
    out = []
    for k in range(1, n + 1):
        ring = [(k - 1 + j) % n + 1 for j in range(1, n)]
        others = ring if n - 1 <= PLACED_FALLBACKS else _some(ring, PLACED_FALLBACKS)
        name = placed_backend(k).replace("place_", "place_grpc_") if grpc else placed_backend(k)
        lines = ["", f"backend {name}", "    balance first"]
        if not grpc:
            lines.append(
                "    http-request set-timeout server req.hdr(X-Modelcache-Timeout-Ms)"
                " if { req.hdr(X-Modelcache-Timeout-Ms) -m int 1:60000 }"
            )
            lines.append("    default-server pool-purge-delay 2s")
        lines += [
            "    http-response set-header X-Modelcache-Upstream %si:%sp",
            "    http-response set-header X-Modelcache-Route placed",
        ]
        proto = " proto h2" if grpc else ""
        lines += [
            f"    server node{i} {servers[i - 1]}{dns}{proto} track nodes/node{i}" for i in (k, *others)
        ]
        out.append("\n".join(lines))
    return "\n".join(out) + "\n"


def _some(ring: list[int], limit: int) -> list[int]:
    """The next two on the ring, then the lowest-numbered others (a StatefulSet's first pods)."""
    chosen = ring[:2]
    chosen += [i for i in sorted(ring) if i not in chosen][: limit - len(chosen)]
    return chosen


def _admin_door(admin_listen: str) -> str:
    comment = "    # In-cluster door: every route (admin calls carry the admin token)."
    return f"\n{comment}\n    bind {admin_listen}"


def _public_routes(admin_listen: str) -> str:
    """The public door's allow list: a refusal here never reaches a node."""
    port = admin_listen.rsplit(":", 1)[1]
    return "\n".join(
        [
            "",
            "    # Public door: inference and read-only calls only. Admin calls, /metrics, /docs and",
            "    # /api/v1/cluster (pod addresses) answer on the admin door alone. An allow list, so a",
            "    # route added to the nodes later stays inside until it is listed here.",
            f"    acl admin_door dst_port {port}",
            "    acl read_call method GET HEAD",
            "    acl post_call method POST",
            f"    acl public_read path_reg {' '.join(_PUBLIC_READS)}",
            f"    acl public_inference path_reg {' '.join(_PUBLIC_INFERENCE)}",
            "    acl public_call var(txn.public) -m bool",
            "    http-request set-var(txn.public) bool(1)"
            " if read_call public_read || post_call public_inference",
            f"    http-request return status 404 content-type application/json string '{_NOT_PUBLIC}'"
            " if !admin_door !public_call",
        ]
    )


def k8s_servers(max_nodes: int = K8S_MAX_NODES, port: int = 8000) -> list[str]:
    """host:port of node pods 0..max_nodes-1 by their stable StatefulSet names."""
    domain = f"{K8S_NODE_SERVICE}.{K8S_NAMESPACE}.svc.cluster.local"
    return [f"{K8S_NODE_SET}-{k}.{domain}:{port}" for k in range(max_nodes)]


def _grpc_section(
    listen: str, grpc_servers: Sequence[str], count: int, dns: str, public: bool, placement_map: str
) -> str:
    if count == 0 or len(grpc_servers) != count:
        raise ValueError("the gRPC frontend needs one gRPC address per REST server")
    lines = [
        f"    server node{i} {s}{dns} proto h2 track nodes/node{i}" for i, s in enumerate(grpc_servers, 1)
    ]
    methods = _grpc_public_methods() if public else ""
    text = _GRPC.format(
        listen=listen,
        public_methods=methods,
        servers="\n".join(lines),
        slots=SLOTS,
        placement_map=placement_map,
    )
    return text + _placed_backends(grpc_servers, dns, grpc=True)


def _grpc_public_methods() -> str:
    """The public gRPC door's allow list: anything else is refused with PERMISSION_DENIED."""
    paths = " ".join(_GRPC_SERVICE + m for m in GRPC_PUBLIC_METHODS)
    return "\n".join(
        [
            "",
            "    # Public door: inference and read-only methods only. RepositoryModelLoad/Unload",
            "    # are admin calls: use the REST admin door. An allow list, so a method added later",
            "    # stays inside until it is listed here.",
            "    # HTTP 403: every gRPC client maps it to PERMISSION_DENIED (gRPC's HTTP status mapping);",
            "    # a grpc-status in a 200 needs a content-type HAProxy sends only with a body.",
            f"    acl public_method path {paths}",
            f"    http-request return status 403 content-type application/json string '{_GRPC_NOT_PUBLIC}'"
            " if !public_method",
        ]
    )


def render_compose(max_body_bytes: int = 1_048_576) -> str:
    """deploy/haproxy/haproxy.cfg: the three compose nodes by service name, REST and gRPC."""
    grpc = (f":{COMPOSE_GRPC_PORT}", COMPOSE_GRPC_SERVERS)
    return render(
        COMPOSE_SERVERS,
        ":8080",
        max_body_bytes,
        resolve=True,
        grpc=grpc,
        runtime_api=f"ipv4@{RUNTIME_API_TCP}",
    )


def render_k8s(max_body_bytes: int = 1_048_576, max_nodes: int = K8S_MAX_NODES) -> str:
    """The haproxy.cfg of deploy/k8s/lb.yaml's ConfigMap: node pods by name, two REST doors
    and a public gRPC door."""
    return render(
        k8s_servers(max_nodes),
        f":{K8S_PUBLIC_PORT}",
        max_body_bytes,
        resolve=True,
        dns_options=K8S_DNS_OPTIONS,
        resolvers=K8S_RESOLVERS,
        admin_listen=f":{K8S_ADMIN_PORT}",
        grpc=(f":{K8S_GRPC_PORT}", k8s_servers(max_nodes, NODE_GRPC_PORT)),
        grpc_public=True,
        runtime_api=f"ipv4@{RUNTIME_API_TCP}",
    )


def render_k8s_configmap(max_body_bytes: int = 1_048_576, max_nodes: int = K8S_MAX_NODES) -> str:
    """deploy/k8s/lb-config.yaml: the ConfigMap that deploy/k8s/lb.yaml's HAProxy mounts."""
    lines = render_k8s(max_body_bytes, max_nodes).splitlines(True)
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
    parser.add_argument("--max-nodes", type=int, default=K8S_MAX_NODES, help="--k8s: pod names to resolve")
    args = parser.parse_args(argv)
    if args.compose:
        sys.stdout.write(render_compose(args.max_body_bytes))
    elif args.k8s:
        sys.stdout.write(render_k8s_configmap(args.max_body_bytes, args.max_nodes))
    else:
        sys.stdout.write(
            render(args.server, args.listen, args.max_body_bytes, balance_factor=args.balance_factor)
        )


if __name__ == "__main__":
    main()
