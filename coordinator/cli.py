"""The `modelcache` command line.

Cluster commands (`pin`, `unpin`, `reload`, `status`, `models`) go through a node's admin
API with `--url` (coordinator.client), or straight to Redis with `--redis-url` for local
use. `--json` prints exactly one JSON document on stdout; people's text goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from coordinator.client import AdminRequestInvalid
from coordinator.commands import (
    COMMANDS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
)
from coordinator.errors import ClusterUnavailable, InvalidName, ModelCacheError
from coordinator.redis_url import InvalidRedisUrl
from coordinator.render import error as _error
from coordinator.render import json_failure as _json_failure

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]


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
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3, at most 29)")
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="base port (default 8000): nodes from PORT, their gRPC ports from PORT+50, "
        "embedded Redis PORT+79, load balancer PORT+80 (gRPC PORT+81); "
        "every port up opens lies in PORT..PORT+99",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--lb-port", type=int, help="HAProxy load balancer port (default PORT+80)")
    p.add_argument("--no-lb", action="store_true", help="do not start HAProxy even if it is installed")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="warm restart: each node saves what it caches here and restores it when `up` "
        "starts it again on the same port (MODELCACHE_STATE_DIR; default off)",
    )
    _registry_arg(p)
    _redis_arg(p)

    # Listed for the help text; the `modelcache` entry point (modelcache/__main__.py) hands
    # `node ...` to the node's own parser, so the coordinator never imports the node.
    sub.add_parser("node", help="run one node (see `modelcache node --help`)", add_help=False)

    p = command(
        "publish",
        "publish a model file into the registry",
        "modelcache publish model.ubj --model-type churn --version 1.2.0 --feature age --metric f1=0.91",
        "Shows progress on a terminal; the file is read once (hashed while copied).",
    )
    p.add_argument(
        "artifact", help="model file: .ubj or .json (XGBoost), .joblib or .pkl, .txt (LightGBM), .onnx"
    )
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

    p = command(
        "lb-agent",
        "keep an HAProxy's placement map equal to the cluster's placement in Redis",
        "modelcache lb-agent --haproxy 127.0.0.1:9999 --redis-url redis://redis:6379/0",
        "Runs beside each HAProxy until stopped; one of the agents computes the placement.",
    )
    p.add_argument(
        "--haproxy",
        default=os.environ.get("MODELCACHE_HAPROXY_API", "127.0.0.1:9999"),
        help="HAProxy's admin runtime API: host:port or a unix socket path (MODELCACHE_HAPROXY_API)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between rounds (default 1)")
    p.add_argument("--id", default=None, help="this agent's name (default: hostname-pid)")
    p.add_argument("--health-file", default=None, help="touched after every round (for a liveness probe)")
    _redis_arg(p)

    p = command("demo-models", "train and publish small demo models", "modelcache demo-models --force")
    p.add_argument("--force", action="store_true", help="retrain and replace existing versions")
    _registry_arg(p)
    return parser


def _quiet_broken_pipe() -> int:
    # The reader (`| head`) went away: no traceback, and no second error when Python
    # flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["node"]:
        _become_node(argv[1:])
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
    except (UsageError, InvalidName, InvalidRedisUrl, AdminRequestInvalid) as exc:
        return _fail(str(exc), EXIT_USAGE, wants_json)
    except ClusterUnavailable as exc:
        return _fail(f"cluster unreachable: {exc}", EXIT_UNREACHABLE, wants_json)
    except ModelCacheError as exc:
        return _fail(str(exc), EXIT_FAILED, wants_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _become_node(node_args: Sequence[str]) -> NoReturn:
    """`node ...` that reached this CLI itself (`python -m coordinator.cli node`): become a node process.

    The `modelcache` entry point (modelcache/__main__.py) runs the node in-process; here the
    coordinator starts it as a process, as `modelcache up` does, and never imports it. `-P`
    keeps a `node/` folder of the current directory from shadowing the installed package.
    """
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-P", "-m", "node", *node_args])


def _fail(message: str, code: int, wants_json: bool) -> int:
    """One line on stderr; with --json also the one JSON document stdout promises."""
    _error(message)
    if wants_json:
        _json_failure(message, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
