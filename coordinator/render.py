"""What the `modelcache` command line prints: consoles, JSON documents, tables, error lines."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from coordinator.errors import ModelCacheError
from coordinator.registry import AnyRegistry
from coordinator.wire import Outcome


def _console(stderr: bool) -> Console:
    # Piped output keeps whole table rows (rich would cut them to 80 columns); COLUMNS still wins.
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=100_000 if wide else None)


console = _console(stderr=False)
err_console = _console(stderr=True)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"modelcache: error: {' '.join(str(message).split())}\n")


def json_failure(message: str, code: int) -> None:
    sys.stdout.write(json.dumps({"ok": False, "error": " ".join(message.split()), "exit_code": code}) + "\n")
    sys.stdout.flush()


def registry_models(registry: AnyRegistry, entries: list[dict[str, Any]]) -> None:
    """The registry's versions, one row each, from `entries` (commands._registry_models)."""
    table = Table(title=f"registry {registry.location}")
    for col in ("model type", "version", "format", "size", "features", "metrics", "created"):
        table.add_column(col)
    for entry in entries:
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


def cluster_models(url: str, models: list[dict[str, Any]]) -> None:
    """The models as the admin API at `url` lists them."""
    table = Table(title=f"models at {url}")
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


def change(what: str, change: dict[str, Any], acks: list[dict[str, Any]] | None) -> None:
    """A published change and, when waited for, each node's acknowledgement."""
    if change.get("seq") == 0:
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


def canaries(canaries: dict[str, Any]) -> None:
    """The canaries and each node's outcome."""
    if not canaries:
        console.print("no canaries")
        return
    table = Table(title="canaries")
    for col in ("model type", "version", "percent", "nodes"):
        table.add_column(col)
    for mt, c in sorted(canaries.items()):
        nodes = ", ".join(f"{n['node_id']}: {n.get('outcome') or '-'}" for n in c.get("nodes", [])) or "-"
        table.add_row(mt, c["version"], f"{c['percent']:g}%", nodes)
    console.print(table)


def status(view: dict[str, Any]) -> None:
    """The cluster: live nodes, what they cache and their hit rates, pins and canaries."""
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
