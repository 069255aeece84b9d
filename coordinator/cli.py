"""The `modelcache` command line.

Cluster commands (`pin`, `unpin`, `reload`, `status`, `models`) go through a node's admin
API with `--url` (coordinator.client), or straight to Redis with `--redis-url` for local
use. `--json` prints exactly one JSON document on stdout; people's text goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from coordinator.client import AdminClient, AdminRequestInvalid
from coordinator.errors import ClusterUnavailable, InvalidName, ModelCacheError, VersionNotFound
from coordinator.registry import Registry
from coordinator.state import ClusterState, nothing_changed
from coordinator.wire import Change, Outcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 130, 141

EXIT_CODES = """exit codes:
  0  success
  1  the operation failed: a node failed or timed out, unknown model or version,
     wrong or missing admin token (the message says which)
  2  usage error: bad arguments
  3  the cluster is unreachable (no answer at --url, or Redis down)

cluster commands (pin, unpin, reload, status, models) use the admin API of a node or
the load balancer with --url (MODELCACHE_URL) and --token (MODELCACHE_ADMIN_TOKEN),
or Redis directly with --redis-url (MODELCACHE_REDIS_URL) and --registry.
--json prints exactly one JSON document on stdout, whatever the exit code.

example:
  modelcache --url http://lb:8080 --token $TOKEN pin churn 1.0.0 --wait --json"""


def _console(stderr: bool) -> Console:
    # Piped output keeps whole table rows (rich would cut them to 80 columns); COLUMNS still wins.
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=100_000 if wide else None)


console = _console(stderr=False)
err_console = _console(stderr=True)


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with errors on one line: `modelcache: error: ...`, exit 2."""

    def error(self, message: str) -> NoReturn:
        hint = f"see `{self.prog} --help`"
        self.exit(EXIT_USAGE, f"modelcache: error: {message} ({hint})\n")


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
        help="Redis of the cluster, when not using --url (MODELCACHE_REDIS_URL)",
    )
    parser.add_argument(
        "--redis-prefix",
        default=os.environ.get("MODELCACHE_REDIS_PREFIX", "modelcache:"),
        help="key prefix of the cluster (MODELCACHE_REDIS_PREFIX)",
    )


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")


def _metric(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"metric {text!r} must look like name=0.93") from None


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


# -- registry commands ---------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    options = {
        "features": args.feature or (),
        "metrics": dict(args.metric or ()),
        "task": args.task,
        "force": args.force,
    }
    if sys.stderr.isatty() and not args.json:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(f"publishing {Path(args.artifact).name}", total=None)
            meta = registry.publish(
                args.artifact,
                args.model_type,
                args.version,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **options,
            )
    else:
        meta = registry.publish(args.artifact, args.model_type, args.version, **options)
    if args.json:
        _print_json(meta.to_dict())
        return EXIT_OK
    console.print(
        f"published [bold]{meta.model_type} {meta.version}[/] ({meta.format}, {meta.size_bytes} bytes, "
        f"sha256 {meta.sha256[:12]}…) to {registry.root.resolve()}"
    )
    return EXIT_OK


def _registry_models(registry: Registry) -> list[dict[str, Any]]:
    out = []
    for mt in registry.model_types():
        try:
            latest: str | None = registry.latest(mt)
        except VersionNotFound:
            latest = None
        out.append({"model_type": mt, "versions": registry.versions(mt), "latest": latest})
    return out


def cmd_models(args: argparse.Namespace) -> int:
    if args.url:
        return _models_over_http(args)
    registry = Registry(args.registry)
    if args.json:
        _print_json(_registry_models(registry))
        return EXIT_OK
    types = registry.model_types()
    if not types:
        console.print(f"no models in {registry.root.resolve()}; try `modelcache demo-models`")
        return EXIT_OK
    table = Table(title=f"registry {registry.root.resolve()}")
    for col in ("model type", "version", "format", "size", "features", "metrics", "created"):
        table.add_column(col)
    for entry in _registry_models(registry):
        mt, latest = entry["model_type"], entry["latest"]
        for v in entry["versions"]:
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
    return EXIT_OK


def _models_over_http(args: argparse.Namespace) -> int:
    with AdminClient(args.url, args.token) as client:
        models = client.models()
    if args.json:
        _print_json(models)
        return EXIT_OK
    table = Table(title=f"models at {args.url}")
    for col in ("model type", "versions", "latest", "pin", "serving", "cached on the answering node"):
        table.add_column(col)
    for m in models:
        versions = ", ".join(m.get("versions", [])) or f"[red]{m.get('error', '-')}[/]"
        cached = ", ".join(m.get("cached", [])) or "-"
        table.add_row(
            m["model_type"],
            versions,
            m.get("latest") or "-",
            m.get("pin") or "-",
            m.get("serving") or "-",
            cached,
        )
    console.print(table)
    return EXIT_OK


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
    return EXIT_OK


# -- processes -----------------------------------------------------------------
def run_node(node_args: Sequence[str]) -> int:
    """`modelcache node ...`: the installed node package's entry point, in this process.

    The one place the coordinator imports the node, and only when asked to be one: a
    subprocess of `python -m node` would run a `node/` folder of the current directory.
    """
    from node.__main__ import main as node_main

    return node_main(list(node_args))


def cmd_up(args: argparse.Namespace) -> int:
    from coordinator.launcher import run_up

    return run_up(args)


# -- cluster commands ----------------------------------------------------------
def _state(args: argparse.Namespace) -> ClusterState:
    if not args.redis_url:
        raise UsageError(
            "no cluster given: pass --url (a node or the load balancer; MODELCACHE_URL) "
            "or --redis-url (MODELCACHE_REDIS_URL)"
        )
    return ClusterState.from_url(args.redis_url, args.redis_prefix, origin=f"cli@{socket.gethostname()}")


def _change_doc(state: ClusterState, change: Change, wait: bool, timeout_s: float) -> dict[str, Any]:
    """The admin API's answer to a change (node.sync), built here from Redis directly."""
    doc: dict[str, Any] = {
        "scope": "cluster",
        "change": {
            "kind": change.kind.value,
            "model_type": change.model_type,
            "version": change.version or None,
            "seq": change.seq,
            "generation": change.generation,
            "epoch": change.epoch,
        },
    }
    if change.seq == 0:
        return doc | {"ok": True, "detail": nothing_changed(change), "acks": []}
    if not wait:
        return doc | {"ok": True, "detail": "published; nodes apply it within milliseconds"}
    rows = state.wait_for_acks(change, timeout_s)
    doc["acks"] = [
        {
            "node_id": r.node_id,
            "outcome": r.outcome.value,
            "version": r.version,
            "detail": r.detail,
            "propagation_ms": r.propagation_ms,
        }
        for r in rows
    ]
    doc["ok"] = all(r.outcome is Outcome.OK for r in rows)
    return doc


def _change(args: argparse.Namespace, what: str) -> int:
    """Run pin/unpin/reload over HTTP or Redis, then report the one shape both return."""
    wait, timeout = args.wait, args.timeout
    if args.url:
        with AdminClient(args.url, args.token) as client:
            if args.command == "pin":
                doc = client.pin(args.model_type, args.version, wait=wait, timeout_s=timeout)
            elif args.command == "unpin":
                doc = client.unpin(args.model_type, wait=wait, timeout_s=timeout)
            else:
                doc = client.reload(args.model_type, args.version, wait=wait, timeout_s=timeout)
    else:
        state = _state(args)
        try:
            if args.command == "pin":
                change = state.pin(args.model_type, args.version, Registry(args.registry))
            elif args.command == "unpin":
                change = state.unpin(args.model_type)
            else:
                change = state.reload(args.model_type, args.version, Registry(args.registry))
            doc = _change_doc(state, change, wait, timeout)
        finally:
            state.close()
    return _report(doc, args, what)


def _report(doc: dict[str, Any], args: argparse.Namespace, what: str) -> int:
    change, acks = doc.get("change", {}), doc.get("acks")
    what = what.format(version=change.get("version"))
    if args.json:
        _print_json(doc)
    elif change.get("seq") == 0:
        console.print(f"{what}: nothing changed")
    else:
        # The epoch names the change too: seq restarts when Redis loses its data.
        console.print(
            f"{what}: published as change #{change.get('seq')} "
            f"(generation {change.get('generation')}, epoch {change.get('epoch')})"
        )
        if acks:
            table = Table(title=f"acknowledgements of change #{change.get('seq')}")
            for col in ("node", "outcome", "serving", "propagation ms", "detail"):
                table.add_column(col)
            for a in acks:
                color = "green" if a["outcome"] == Outcome.OK.value else "red"
                ms = f"{a['propagation_ms']:.1f}" if a.get("propagation_ms") is not None else "-"
                table.add_row(
                    a["node_id"], f"[{color}]{a['outcome']}[/]", a.get("version") or "-", ms, a["detail"]
                )
            console.print(table)
    if args.wait and change.get("seq") and not acks:
        err_console.print("[yellow]no live nodes to acknowledge[/]")
    bad = [a for a in acks or () if a["outcome"] != Outcome.OK.value]
    if bad or not doc.get("ok", True):
        names = ", ".join(f"{a['node_id']} ({a['outcome']})" for a in bad)
        _error(f"{len(bad)} of {len(acks or ())} node(s) failed or timed out: {names}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_pin(args: argparse.Namespace) -> int:
    return _change(args, f"pinned {args.model_type} to {{version}}")


def cmd_unpin(args: argparse.Namespace) -> int:
    return _change(args, f"unpinned {args.model_type}")


def cmd_reload(args: argparse.Namespace) -> int:
    what = f"reload of {args.model_type or 'every model'}" + (f" {args.version}" if args.version else "")
    return _change(args, what)


def cmd_canary(args: argparse.Namespace) -> int:
    """`canary T V --percent P`, `canary T --promote`, `canary T --abort`, `canary --list`."""
    actions = [a for a in ("promote", "abort", "list") if getattr(args, a)]
    if len(actions) > 1:
        raise UsageError(f"choose one of --{', --'.join(actions)}")
    action = actions[0] if actions else "set"
    if action == "list":
        if args.model_type or args.version:
            raise UsageError("--list takes no model type or version")
        return _list_canaries(args)
    if not args.model_type:
        raise UsageError("name the model type: modelcache canary T V --percent P (or --promote/--abort)")
    if action == "set" and (args.version is None or args.percent is None):
        raise UsageError(f"start a canary with: modelcache canary {args.model_type} VERSION --percent P")
    if action != "set" and (args.version is not None or args.percent is not None):
        raise UsageError(f"--{action} takes the model type only")
    wait, timeout, mt = args.wait, args.timeout, args.model_type
    if args.url:
        with AdminClient(args.url, args.token) as client:
            if action == "set":
                doc = client.canary(mt, args.version, args.percent, wait=wait, timeout_s=timeout)
            elif action == "promote":
                doc = client.promote_canary(mt, wait=wait, timeout_s=timeout)
            else:
                doc = client.abort_canary(mt, wait=wait, timeout_s=timeout)
    else:
        state = _state(args)
        try:
            if action == "set":
                change = state.canary(mt, args.version, args.percent, Registry(args.registry))
            elif action == "promote":
                change = state.promote(mt, Registry(args.registry))
            else:
                change = state.abort_canary(mt)
            doc = _change_doc(state, change, wait, timeout)
        finally:
            state.close()
    what = {
        "set": f"canary {mt} {{version}} at {args.percent:g}%" if args.percent is not None else "",
        "promote": f"promoted the canary of {mt}: pinned to {{version}}",
        "abort": f"aborted the canary of {mt}",
    }[action]
    return _report(doc, args, what)


def _list_canaries(args: argparse.Namespace) -> int:
    if args.url:
        with AdminClient(args.url, args.token) as client:
            canaries = client.canaries()
    else:
        state = _state(args)
        try:
            canaries = {mt: {**c.to_dict(), "nodes": []} for mt, c in state.canaries().items()}
        finally:
            state.close()
    if args.json:
        _print_json({"canaries": canaries})
        return EXIT_OK
    if not canaries:
        console.print("no canaries")
        return EXIT_OK
    table = Table(title="canaries")
    for col in ("model type", "version", "percent", "nodes"):
        table.add_column(col)
    for mt, c in sorted(canaries.items()):
        nodes = ", ".join(f"{n['node_id']}: {n['outcome'] or '-'}" for n in c.get("nodes", [])) or "-"
        table.add_row(mt, c["version"], f"{c['percent']:g}%", nodes)
    console.print(table)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.url:
        with AdminClient(args.url, args.token) as client:
            view = client.cluster()
    else:
        state = _state(args)
        try:
            view = state.describe()
        finally:
            state.close()
    if args.json:
        _print_json(view)
        return EXIT_OK
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
    canaries = view.get("canaries") or {}
    if canaries:
        shown = ", ".join(f"{k}={c['version']} at {c['percent']:g}%" for k, c in sorted(canaries.items()))
        console.print(f"canaries: {shown}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "publish": cmd_publish,
    "models": cmd_models,
    "demo-models": cmd_demo_models,
    "up": cmd_up,
    "pin": cmd_pin,
    "unpin": cmd_unpin,
    "reload": cmd_reload,
    "status": cmd_status,
    "canary": cmd_canary,
}


def _version() -> str:
    try:
        return metadata.version("modelcache")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="modelcache",
        description="Serve many ML models from a fleet of caching nodes.",
        epilog=EXIT_CODES,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"modelcache {_version()}")
    parser.add_argument(
        "--url",
        default=os.environ.get("MODELCACHE_URL") or None,
        help="admin API of a node or the load balancer for cluster commands (MODELCACHE_URL)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MODELCACHE_ADMIN_TOKEN") or None,
        help="admin bearer token (MODELCACHE_ADMIN_TOKEN)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, example: str, description: str = "") -> argparse.ArgumentParser:
        text = f"{summary[0].upper()}{summary[1:]}." + (f"\n\n{description}" if description else "")
        return sub.add_parser(
            name,
            help=summary,
            description=text,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES.split(chr(10) + chr(10))[0]}",
            formatter_class=raw,
        )

    p = command(
        "up",
        "start a local cluster (embedded Redis, nodes, demo models)",
        "modelcache up --nodes 3 --port 8000",
        "Ctrl-C stops every process it started.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--port", type=int, default=8000, help="first node's port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--lb-port", type=int, default=8080, help="HAProxy load balancer port (default 8080)")
    p.add_argument("--no-lb", action="store_true", help="do not start HAProxy even if it is installed")
    _registry_arg(p)
    _redis_arg(p)

    # Listed for the help text; main() hands `node ...` to the node's own parser.
    sub.add_parser("node", help="run one node (see `modelcache node --help`)", add_help=False)

    p = command(
        "publish",
        "publish a model file into the registry",
        "modelcache publish model.ubj --model-type churn --version 1.2.0 --feature age --metric f1=0.91",
        "Shows progress on a terminal; the file is read once (hashed while copied).",
    )
    p.add_argument("artifact", help="model file: .ubj or .json (XGBoost), .joblib or .pkl")
    p.add_argument("--model-type", required=True)
    p.add_argument("--version", required=True, help="PEP 440 version, e.g. 1.2.0 or 2.0.0b1")
    p.add_argument("--feature", action="append", help="feature name, in order (repeat)")
    p.add_argument("--metric", action="append", type=_metric, help="metric as name=value (repeat)")
    p.add_argument("--task", help="e.g. binary_classification, regression")
    p.add_argument("--force", action="store_true", help="replace an existing version")
    _json_arg(p)
    _registry_arg(p)

    p = command(
        "models",
        "list the models: the registry's, or the cluster's with --url",
        "modelcache --url http://127.0.0.1:8080 models --json",
    )
    _json_arg(p)
    _registry_arg(p)

    def change_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="wait for every live node's acknowledgement")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
        _json_arg(p)
        _registry_arg(p)
        _redis_arg(p)

    p = command(
        "pin",
        "pin a model type to a version on every node",
        "modelcache --url http://127.0.0.1:8080 --token $TOKEN pin churn 1.0.0 --wait",
        "With --wait, exit 1 unless every live node applied the pin in time.",
    )
    p.add_argument("model_type")
    p.add_argument("version")
    change_args(p)

    p = command(
        "unpin",
        "remove a pin: every node serves the latest stable version",
        "modelcache --url http://127.0.0.1:8080 --token $TOKEN unpin churn --wait",
    )
    p.add_argument("model_type")
    change_args(p)

    p = command(
        "reload",
        "reload one model type (or every one) on every node",
        "modelcache --url http://127.0.0.1:8080 --token $TOKEN reload churn --wait --timeout 60",
        "With --wait, exit 1 unless every live node reloaded in time.",
    )
    p.add_argument("model_type", nargs="?")
    p.add_argument("--version", help="load this exact version afresh")
    change_args(p)

    p = command(
        "canary",
        "send a share of a model type's requests to another version on every node",
        "modelcache --url http://127.0.0.1:8080 --token $TOKEN canary churn 1.1.0 --percent 10 --wait",
        "Requests that name no version go to VERSION with probability P% (the same routing key\n"
        "gets the same version on every node); the rest to the served version (pin, else latest).\n"
        "  modelcache canary T V --percent P [--wait]   start or change the canary\n"
        "  modelcache canary T --promote                pin V everywhere and end the canary\n"
        "  modelcache canary T --abort                  end it: 100% back to the served version\n"
        "  modelcache canary --list                     the canaries and each node's outcome\n"
        "With --wait, exit 1 unless every live node loaded the canary (each ack says why not).",
    )
    p.add_argument("model_type", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("--percent", type=float, help="share of requests naming no version, 0-100")
    p.add_argument("--promote", action="store_true", help="pin the canary's version and end the canary")
    p.add_argument("--abort", action="store_true", help="end the canary (100%% to the served version)")
    p.add_argument("--list", action="store_true", help="list the canaries")
    change_args(p)

    p = command(
        "status",
        "the cluster: nodes, cached models, hit rates, pins",
        "modelcache --url http://127.0.0.1:8080 status --json",
    )
    _json_arg(p)
    _redis_arg(p)

    p = command("demo-models", "train and publish small demo models", "modelcache demo-models --force")
    p.add_argument("--force", action="store_true", help="retrain and replace existing versions")
    _registry_arg(p)
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"modelcache: error: {' '.join(str(message).split())}\n")


def _quiet_broken_pipe() -> int:
    # The reader (`| head`) went away: no traceback, and no second error when Python
    # flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:
        return run_node(argv[1:])
    wants_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and wants_json:
            _json_failure("usage error (see stderr)", EXIT_USAGE)
        raise
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (UsageError, InvalidName, AdminRequestInvalid) as exc:
        return _fail(str(exc), EXIT_USAGE, wants_json)
    except ClusterUnavailable as exc:
        return _fail(f"cluster unreachable: {exc}", EXIT_UNREACHABLE, wants_json)
    except ModelCacheError as exc:
        return _fail(str(exc), EXIT_FAILED, wants_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(message: str, code: int, wants_json: bool) -> int:
    """One line on stderr; with --json also the one JSON document stdout promises."""
    _error(message)
    if wants_json:
        _json_failure(message, code)
    return code


def _json_failure(message: str, code: int) -> None:
    sys.stdout.write(json.dumps({"ok": False, "error": " ".join(message.split()), "exit_code": code}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
