"""The `modelcache` commands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator import render
from coordinator.artifacts import describe_artifact
from coordinator.client import AdminClient
from coordinator.control import Control
from coordinator.errors import VersionNotFound
from coordinator.redis_url import redact
from coordinator.registry import AnyRegistry, open_registry
from coordinator.render import console, err_console
from coordinator.wire import Outcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 130, 141


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


# -- registry commands ---------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    # LightGBM and ONNX models describe themselves (task, feature names).
    described = describe_artifact(Path(args.artifact), args.feature or ())
    options = {
        "features": args.feature or described.features,
        "metrics": dict(args.metric or ()),
        "task": args.task or described.task,
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
        render.print_json(meta.to_dict())
        return EXIT_OK
    console.print(
        f"published [bold]{meta.model_type} {meta.version}[/] ({meta.format}, {meta.size_bytes} bytes, "
        f"sha256 {meta.sha256[:12]}…) to {registry.location}"
    )
    return EXIT_OK


def _registry_models(registry: AnyRegistry) -> list[dict[str, Any]]:
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
    registry = open_registry(args.registry)
    if args.json:
        render.print_json(_registry_models(registry))
        return EXIT_OK
    types = registry.model_types()
    if not types:
        console.print(f"no models in {registry.location}; try `modelcache demo-models`")
        return EXIT_OK
    render.registry_models(registry, _registry_models(registry))
    return EXIT_OK


def _models_over_http(args: argparse.Namespace) -> int:
    with AdminClient(args.url, args.token) as client:
        models = client.models()
    if args.json:
        render.print_json(models)
        return EXIT_OK
    render.cluster_models(redact(args.url), models)
    return EXIT_OK


def cmd_demo_models(args: argparse.Namespace) -> int:
    from coordinator.demo import DEMO_SPECS, publish_demo_models

    registry = open_registry(args.registry)

    def progress(spec: object, i: int, total: int) -> None:
        console.print(f"[{i + 1}/{total}] training {spec.model_type} {spec.version}")  # type: ignore[attr-defined]

    published = publish_demo_models(registry, force=args.force, progress=progress)
    skipped = len(DEMO_SPECS) - len(published)
    console.print(
        f"published {len(published)} demo model versions to {registry.location}"
        + (f" ({skipped} already there)" if skipped else "")
    )
    return EXIT_OK


# -- processes -----------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from coordinator.launcher import run_up

    return run_up(args)


# -- cluster commands ----------------------------------------------------------
def _control(args: argparse.Namespace) -> Control:
    """The operator commands straight over Redis (coordinator.control, as the admin API runs them)."""
    if not args.redis_url:
        raise UsageError(
            "no cluster given: pass --url (a node or the load balancer; MODELCACHE_URL) "
            "or --redis-url (MODELCACHE_REDIS_URL)"
        )
    origin = f"cli@{socket.gethostname()}"
    # Read-only commands (status) take no --registry: they never reach it, and Registry is lazy.
    registry = open_registry(getattr(args, "registry", None) or "./registry")
    return Control.connect(args.redis_url, registry, args.redis_prefix, origin=origin)


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
        with _control(args) as control:
            if args.command == "pin":
                change = control.pin(args.model_type, args.version)
            elif args.command == "unpin":
                change = control.unpin(args.model_type)
            else:
                change = control.reload(args.model_type, args.version)
            doc = control.answer(change, wait, timeout)
    return _report(doc, args, what)


def _report(doc: dict[str, Any], args: argparse.Namespace, what: str) -> int:
    change, acks = doc.get("change", {}), doc.get("acks")
    what = what.format(version=change.get("version"))
    if args.json:
        render.print_json(doc)
    else:
        render.change(what, change, acks)
    if args.wait and change.get("seq") and not acks:
        err_console.print("[yellow]no live nodes to acknowledge[/]")
    bad = [a for a in acks or () if a["outcome"] != Outcome.OK.value]
    # `ok` is there: the client refuses an answer without it (coordinator.client).
    if bad or not doc["ok"]:
        names = ", ".join(f"{a['node_id']} ({a['outcome']})" for a in bad)
        render.error(f"{len(bad)} of {len(acks or ())} node(s) failed or timed out: {names}")
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
        with _control(args) as control:
            if action == "set":
                change = control.canary(mt, args.version, args.percent)
            elif action == "promote":
                change = control.promote(mt)
            else:
                change = control.abort_canary(mt)
            doc = control.answer(change, wait, timeout)
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
        with _control(args) as control:
            canaries = control.canaries()["canaries"]
    if args.json:
        render.print_json({"canaries": canaries})
        return EXIT_OK
    render.canaries(canaries)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.url:
        with AdminClient(args.url, args.token) as client:
            view = client.cluster()
    else:
        with _control(args) as control:
            view = control.describe()
    if args.json:
        render.print_json(view)
        return EXIT_OK
    render.status(view)
    return EXIT_OK


def cmd_lb_agent(args: argparse.Namespace) -> int:
    import logging
    import os
    import threading

    from coordinator.haproxy_api import RuntimeAPI
    from coordinator.lbagent import PlacementAgent
    from coordinator.link import Link

    if not args.redis_url:
        raise UsageError("lb-agent needs --redis-url (or MODELCACHE_REDIS_URL)")
    if args.interval <= 0:
        raise UsageError("--interval must be above 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    agent_id = args.id or f"{socket.gethostname()}-{os.getpid()}"
    link = Link.from_url(args.redis_url, args.redis_prefix)
    health = Path(args.health_file) if args.health_file else None
    agent = PlacementAgent(
        link, RuntimeAPI(args.haproxy), agent_id, interval_s=args.interval, health_file=health
    )
    agent.run(threading.Event())  # until the process is stopped
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "lb-agent": cmd_lb_agent,
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
