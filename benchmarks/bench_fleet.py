"""Fleet-scale figures: N simulated nodes (the real ClusterSync threads, model loading a no-op) on one Redis.

    python benchmarks/bench_fleet.py [--sizes 10,50,200] [--changes 20] [--idle-s 10]
                                     [--out benchmarks/results/fleet.json]

Each agent is a real `ClusterSync` (subscriber thread, reconcile loop, heartbeat, acks)
whose `Reloads` (node.reloads) is a stub: applying a pin costs nothing, so what is measured is the
cluster machinery. All agents share this process (2 threads each), so at large N the
agents' own Python (one GIL) is part of every figure; Redis' share is reported apart.

Per size it reports: pin -> all agents applied (p50/p99, from the change's timestamp to the
last agent's ack), `wait_for_acks` completion, the stages of one agent's apply (event
received, loop woken, state read, applied, ack written; medians over agents and changes),
Redis commands/s and memory while idle and during changes, and the agents' background CPU
per agent per second while idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import ROOT, report

from coordinator.control import Control
from coordinator.link import Link
from coordinator.membership import Membership
from coordinator.redis_server import RedisServer
from coordinator.state import ClusterState
from coordinator.versions import normalize_version
from coordinator.wire import Change, Outcome
from node.metrics import NodeMetrics
from node.reconcile import Reconciled, Reconciler
from node.reloads import Applied
from node.sync import ClusterSync, NodeReport, SyncTiming

STAGES = ("event", "woken", "read", "applied", "acked")


class StubRegistry:
    def metadata(self, model_type: str, version: str) -> Any:
        return SimpleNamespace(version=normalize_version(version))


class StubReloads:
    """The parts of node.reloads.Reloads that the reconciler calls; applying a pin is instant."""

    def __init__(self) -> None:
        self._pins: dict[str, str] = {}

    def pins(self) -> dict[str, str]:
        return dict(self._pins)

    def set_pin(self, model_type: str, version: str | None, *, source: str = "cluster") -> Applied:
        if version is None:
            self._pins.pop(model_type, None)
        else:
            self._pins[model_type] = version
        return Applied(model_type, Outcome.OK, version, None, "pinned")

    def reload(self, model_type: str, version: str | None, source: str = "cluster") -> list[Applied]:
        return [Applied(model_type, Outcome.OK, version, version, "reloaded")]

    def served(self, model_type: str) -> str | None:
        return self._pins.get(model_type)

    def serving(self) -> dict[str, str]:
        return dict(self._pins)

    def model_types(self) -> list[str]:
        return sorted(self._pins)


class TimedReconciler(Reconciler):
    """A reconciler that stamps when it read and applied each snapshot (wall clock, like change.ts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, float] = {}

    def step(self, snap: Any) -> Reconciled:
        self.pending["read"] = time.time()
        result = super().step(snap)
        self.pending["applied"] = time.time()
        return result


class Agent(ClusterSync):
    """ClusterSync with timestamps at each stage of applying a change (wall clock, like change.ts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks: dict[int, dict[str, float]] = defaultdict(dict)
        self.timed: TimedReconciler = self.reconciler  # type: ignore[assignment]
        read = self.state.read

        def timed_read() -> Any:
            self.timed.pending["woken"] = time.time()
            return read()

        self.state.read = timed_read  # type: ignore[method-assign]
        write_ack = self.members.write_ack

        def timed_write_ack(ack: Any) -> None:
            write_ack(ack)
            marks = self.marks[ack.seq]
            if not marks:
                marks.update(self.timed.pending, acked=time.time())
            self.timed.pending = {}

        self.members.write_ack = timed_write_ack  # type: ignore[method-assign]

    def _on_event(self, data: Any) -> None:
        self.timed.pending["event"] = time.time()
        super()._on_event(data)


def make_agent(url: str, prefix: str, node_id: str, heartbeat_s: float, metrics: NodeMetrics) -> Agent:
    link = Link.from_url(url, prefix)
    reconciler = TimedReconciler(node_id, StubReloads(), metrics)  # type: ignore[arg-type]
    return Agent(
        link,
        ClusterState(link, origin=node_id),
        Membership(link),
        reconciler,
        metrics,
        url="",
        report=lambda: NodeReport(cached=[], serving={}, stats={"cache_hits": 0, "cache_misses": 0}),
        timing=SyncTiming(heartbeat_s=heartbeat_s),
    )


async def _stop_all(agents: list[Agent]) -> None:
    await asyncio.gather(*(a.stop() for a in agents))


def run_size(url: str, n: int, changes: int, idle_s: float, heartbeat_s: float) -> dict[str, Any]:
    prefix = f"fleet{n}:"
    metrics = NodeMetrics()
    agents = []
    for i in range(n):
        agents.append(make_agent(url, prefix, f"agent-{i:04d}", heartbeat_s, metrics))
    loop = asyncio.new_event_loop()
    for a in agents:
        loop.run_until_complete(a.start())
    control = Control.connect(url, StubRegistry(), prefix, origin="bench")  # type: ignore[arg-type]
    members, admin = control.members, control.state.link.client
    try:
        deadline = time.monotonic() + 60
        while len(members.heartbeats()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(members.heartbeats())} of {n} agents joined")
            time.sleep(0.1)
        # Every subscriber listening (else the first change waits for a periodic reconcile).
        while admin.pubsub_numsub(control.state.link.keys.events)[0][1] < n:
            if time.monotonic() > deadline:
                raise RuntimeError("not every agent subscribed to the events channel")
            time.sleep(0.1)
        time.sleep(1.0)  # let start-up reconciles settle

        # Idle: heartbeats and periodic reconciles only.
        before = admin.info("stats")["total_commands_processed"]
        cpu0, t0 = _cpu(), time.monotonic()
        time.sleep(idle_s)
        idle_wall = time.monotonic() - t0
        idle_cpu = _cpu() - cpu0
        idle_cmds = (admin.info("stats")["total_commands_processed"] - before) / idle_wall

        # Changes: pin alternating versions, wait for every ack.
        all_applied, waited = [], []
        stages: dict[str, list[float]] = defaultdict(list)
        before = admin.info("stats")["total_commands_processed"]
        t0 = time.monotonic()
        for i in range(changes):
            start = time.perf_counter()
            change: Change = control.pin("m", ("1.0", "2.0")[i % 2])
            rows = members.wait_for_acks(change, timeout_s=30)
            waited.append(time.perf_counter() - start)
            assert len(rows) == n and all(r.outcome == "ok" for r in rows), rows[:3]
            acked = [a.marks.get(change.seq, {}) for a in agents]
            all_applied.append(max(m.get("acked", 0.0) for m in acked) - change.ts)
            for m in acked:
                prev = change.ts
                for stage in STAGES:
                    if stage in m:
                        stages[stage].append(m[stage] - prev)
                        prev = m[stage]
            time.sleep(0.05)
        change_cmds = (admin.info("stats")["total_commands_processed"] - before) / (time.monotonic() - t0)
        memory = admin.info("memory")["used_memory"]
    finally:
        for a in agents:  # tell every agent first: their threads then end in parallel
            a._stop.set()
            a._wake.set()
        loop.run_until_complete(_stop_all(agents))
        loop.close()
        for key in admin.scan_iter(match=f"{prefix}*"):
            admin.delete(key)
        control.close()
    return {
        "agents": n,
        "changes": changes,
        "pin_to_all_applied_p50_ms": _ms(_pct(all_applied, 0.5)),
        "pin_to_all_applied_p99_ms": _ms(_pct(all_applied, 0.99)),
        "wait_for_acks_p50_ms": _ms(_pct(waited, 0.5)),
        "wait_for_acks_p99_ms": _ms(_pct(waited, 0.99)),
        "wait_for_acks_max_ms": _ms(max(waited)),
        "slowest_change_index": waited.index(max(waited)),
        "stage_median_ms": {s: _ms(statistics.median(stages[s])) for s in STAGES if stages[s]},
        "redis_cmds_per_s_idle": round(idle_cmds, 1),
        "redis_cmds_per_s_changes": round(change_cmds, 1),
        "redis_used_memory_bytes": memory,
        "cpu_ms_per_agent_per_s_idle": round(idle_cpu / idle_wall / n * 1000, 3),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["agents"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(n, [r["pin_to_all_applied_p50_ms"] for r in rows], "o-", label="pin → all applied p50")
    ax1.plot(n, [r["pin_to_all_applied_p99_ms"] for r in rows], "o--", label="pin → all applied p99")
    ax1.plot(n, [r["wait_for_acks_p50_ms"] for r in rows], "s-", label="wait_for_acks p50")
    ax1.set_xlabel("agents")
    ax1.set_ylabel("ms")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(n, [r["redis_cmds_per_s_idle"] for r in rows], "o-", label="Redis cmds/s idle")
    ax2.plot(n, [r["redis_cmds_per_s_changes"] for r in rows], "s-", label="Redis cmds/s during changes")
    ax2.set_xlabel("agents")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle("modelcache fleet simulation (one Redis, agents in one process)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fleet.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # 200 agents each logging "connected" drown the figures
    rows = []
    with RedisServer() as server:
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(run_size(server.url, n, args.changes, args.idle_s, args.heartbeat_s))
            print(json.dumps(rows[-1]), flush=True)
    report(args.out, {"heartbeat_s": args.heartbeat_s, "reconcile_interval_s": 5.0, "sizes": rows})
    plot(rows, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
