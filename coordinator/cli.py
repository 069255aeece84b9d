"""The `modelcache` command line."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coordinator.errors import ClusterUnavailable, ModelCacheError, VersionNotFound
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.wire import Change, Outcome

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=os.environ.get("MODELCACHE_REGISTRY", "./registry"),
        help="registry root (MODELCACHE_REGISTRY, default ./registry)",
    )


def _redis_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("MODELCACHE_REDIS_URL"),
        help="Redis of the cluster (MODELCACHE_REDIS_URL)",
    )
    parser.add_argument(
        "--redis-prefix",
        default=os.environ.get("MODELCACHE_REDIS_PREFIX", "modelcache:"),
        help="key prefix of the cluster (MODELCACHE_REDIS_PREFIX)",
    )


def _metric(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"metric {text!r} must look like name=0.93") from None


# -- registry commands ---------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    meta = Registry(args.registry).publish(
        args.artifact,
        args.model_type,
        args.version,
        features=args.feature or (),
        metrics=dict(args.metric or ()),
        task=args.task,
        force=args.force,
    )
    console.print(
        f"published [bold]{meta.model_type} {meta.version}[/] ({meta.format}, {meta.size_bytes} bytes, "
        f"sha256 {meta.sha256[:12]}…) to {Path(args.registry).resolve()}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    types = registry.model_types()
    if args.json:
        out = []
        for mt in types:
            try:
                latest: str | None = registry.latest(mt)
            except VersionNotFound:
                latest = None
            out.append({"model_type": mt, "versions": registry.versions(mt), "latest": latest})
        print(json.dumps(out, indent=2))
        return 0
    if not types:
        console.print(f"no models in {registry.root.resolve()}; try `modelcache demo-models`")
        return 0
    table = Table(title=f"registry {registry.root.resolve()}")
    for col in ("model type", "version", "format", "size", "features", "metrics", "created"):
        table.add_column(col)
    for mt in types:
        try:
            latest = registry.latest(mt)
        except VersionNotFound:
            latest = None
        for v in registry.versions(mt):
            try:
                m = registry.metadata(mt, v)
            except ModelCacheError as exc:
                table.add_row(mt, v, f"[red]{exc}[/]", "", "", "", "")
                continue
            label = f"{v} [green](latest)[/]" if v == latest else v
            metrics = ", ".join(f"{k}={val:g}" for k, val in m.metrics.items())
            table.add_row(
                mt, label, m.format, f"{m.size_bytes:,}", str(len(m.features)), metrics, m.created_at
            )
    console.print(table)
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from coordinator.demo import DEMO_SPECS, publish_demo_models

    registry = Registry(args.registry)

    def progress(spec: object, i: int, total: int) -> None:
        console.print(f"[{i + 1}/{total}] training {spec.model_type} {spec.version}")  # type: ignore[attr-defined]

    published = publish_demo_models(registry, force=args.force, progress=progress)
    skipped = len(DEMO_SPECS) - len(published)
    console.print(
        f"published {len(published)} demo model versions to {registry.root.resolve()}"
        + (f" ({skipped} already there)" if skipped else "")
    )
    return 0


# -- processes -----------------------------------------------------------------
def run_node(node_args: Sequence[str]) -> int:
    """`modelcache node ...`: exec the node's own entry point with the same arguments.

    Exec, not import: the coordinator never imports the node package.
    """
    os.execv(sys.executable, [sys.executable, "-m", "node", *node_args])
    return 0  # pragma: no cover


# -- cluster commands ----------------------------------------------------------
def _state(args: argparse.Namespace) -> ClusterState:
    if not args.redis_url:
        raise ClusterUnavailable("no Redis given: pass --redis-url or set MODELCACHE_REDIS_URL")
    return ClusterState.from_url(args.redis_url, args.redis_prefix, origin=f"cli@{socket.gethostname()}")


def _report(state: ClusterState, change: Change, args: argparse.Namespace, what: str) -> int:
    if change.seq == 0:
        console.print(f"{what}: nothing changed")
        return 0
    # The epoch names the change too: seq restarts when Redis loses its data.
    console.print(
        f"{what}: published as change #{change.seq} (generation {change.generation}, epoch {change.epoch})"
    )
    if not args.wait:
        return 0
    rows = state.wait_for_acks(change, args.timeout)
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
    else:
        table = Table(title=f"acknowledgements of change #{change.seq}")
        for col in ("node", "outcome", "serving", "propagation ms", "detail"):
            table.add_column(col)
        for r in rows:
            color = "green" if r.outcome is Outcome.OK else "red"
            ms = f"{r.propagation_ms:.1f}" if r.propagation_ms is not None else "-"
            table.add_row(r.node_id, f"[{color}]{r.outcome}[/]", r.version or "-", ms, r.detail)
        console.print(table)
    if not rows:
        err_console.print("[yellow]no live nodes to acknowledge[/]")
    bad = [r for r in rows if r.outcome is not Outcome.OK]
    if bad:
        err_console.print(f"[red]{len(bad)} of {len(rows)} node(s) failed or timed out[/]")
    return 1 if bad else 0


def cmd_pin(args: argparse.Namespace) -> int:
    state = _state(args)
    change = state.pin(args.model_type, args.version, Registry(args.registry))
    return _report(state, change, args, f"pinned {args.model_type} to {change.version}")


def cmd_unpin(args: argparse.Namespace) -> int:
    state = _state(args)
    return _report(state, state.unpin(args.model_type), args, f"unpinned {args.model_type}")


def cmd_reload(args: argparse.Namespace) -> int:
    state = _state(args)
    change = state.reload(args.model_type, args.version, Registry(args.registry))
    what = f"reload of {args.model_type or 'every model'}" + (f" {args.version}" if args.version else "")
    return _report(state, change, args, what)


def cmd_status(args: argparse.Namespace) -> int:
    state = _state(args)
    view = state.describe()
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    table = Table(title=f"{len(view['nodes'])} live node(s), change #{view['seq']}")
    for col in ("node", "url", "cached", "hit rate", "hits", "misses", "evictions", "redis seq", "heartbeat"):
        table.add_column(col)
    now = time.time()
    for n in view["nodes"]:
        st = n.get("stats", {})
        cached = ", ".join(f"{c['model_type']}:{c['version']}" for c in n.get("cached", [])) or "-"
        table.add_row(
            n["node_id"],
            n.get("url", ""),
            cached,
            f"{st.get('hit_rate', 0):.3f}",
            str(st.get("cache_hits", 0)),
            str(st.get("cache_misses", 0)),
            str(st.get("evictions", 0)),
            str(n.get("applied_seq", "")),
            f"{now - n.get('heartbeat_at', now):.1f}s ago",
        )
    console.print(table)
    pins = ", ".join(f"{k}={v}" for k, v in sorted(view["pins"].items())) or "none"
    console.print(f"pins: {pins}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from coordinator.launcher import run_up

    return run_up(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "publish": cmd_publish,
    "models": cmd_models,
    "demo-models": cmd_demo_models,
    "up": cmd_up,
    "pin": cmd_pin,
    "unpin": cmd_unpin,
    "reload": cmd_reload,
    "status": cmd_status,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelcache", description="Serve many ML models from a fleet of caching nodes."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start a local cluster (embedded Redis, nodes, demo models)")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--port", type=int, default=8000, help="first node's port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--lb-port", type=int, default=8080, help="nginx load balancer port (default 8080)")
    p.add_argument("--no-lb", action="store_true", help="do not start nginx even if it is installed")
    _registry_arg(p)
    _redis_arg(p)

    # Listed for the help text; main() hands `node ...` to the node's own parser.
    sub.add_parser("node", help="run one node (see `modelcache node --help`)", add_help=False)

    p = sub.add_parser("publish", help="publish a model file into the registry")
    p.add_argument("artifact", help="model file: .ubj or .json (XGBoost), .joblib or .pkl")
    p.add_argument("--model-type", required=True)
    p.add_argument("--version", required=True, help="PEP 440 version, e.g. 1.2.0 or 2.0.0b1")
    p.add_argument("--feature", action="append", help="feature name, in order (repeat)")
    p.add_argument("--metric", action="append", type=_metric, help="metric as name=value (repeat)")
    p.add_argument("--task", help="e.g. binary_classification, regression")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    _registry_arg(p)

    p = sub.add_parser("models", help="list the registry")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _registry_arg(p)

    def wait_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="wait for every live node's acknowledgement")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        p.add_argument("--json", action="store_true", help="machine-readable acknowledgements")
        _registry_arg(p)
        _redis_arg(p)

    p = sub.add_parser("pin", help="pin a model type to a version on every node")
    p.add_argument("model_type")
    p.add_argument("version")
    wait_args(p)

    p = sub.add_parser("unpin", help="remove a pin: every node serves the latest stable version")
    p.add_argument("model_type")
    wait_args(p)

    p = sub.add_parser("reload", help="reload one model type (or every one) on every node")
    p.add_argument("model_type", nargs="?")
    p.add_argument("--version", help="load this exact version afresh")
    wait_args(p)

    p = sub.add_parser("status", help="the cluster: nodes, cached models, hit rates, pins")
    p.add_argument("--json", action="store_true")
    _redis_arg(p)

    p = sub.add_parser("demo-models", help="train and publish small demo models")
    p.add_argument("--force", action="store_true", help="retrain and replace existing versions")
    _registry_arg(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:
        return run_node(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ModelCacheError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
