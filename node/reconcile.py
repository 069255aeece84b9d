"""Reconcile: apply a snapshot of the cluster's desired state (pins, canaries, reloads) here.

Pure over its inputs: `step(snapshot)` applies what differs from what this node
applied before (through node.reloads) and returns the acknowledgement to write.
No Redis here: node.sync reads the snapshot, writes the ack and heartbeats, so
this logic is table-tested with plain `Snapshot`s (tests/node/test_reconcile.py).

What it remembers between steps: the generation of each model type it applied
(None until the first step), the epoch those belong to, the canaries it applied,
the pins it found unusable, and the last outcome per model type (the ack).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ClusterUnavailable
from coordinator.keys import ALL
from coordinator.state import Snapshot
from coordinator.wire import Ack, Canary, Change, ChangeKind, ModelAck, Outcome
from node import tracing
from node.metrics import NodeMetrics
from node.reloads import Applied, Reloads

log = logging.getLogger("modelcache.sync")

__all__ = ["Reconciled", "Reconciler"]


@dataclass(frozen=True)
class Reconciled:
    """One step's result: the acknowledgement to write, and whether anything was applied."""

    ack: Ack
    applied: dict[str, Applied]
    """Model type (or `*`) -> what applying its change did here; empty when nothing differed."""


class Reconciler:
    """Brings this node to a snapshot of the desired state, one model type at a time."""

    def __init__(
        self, node_id: str, reloads: Reloads, metrics: NodeMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.node_id, self.reloads, self.metrics = node_id, reloads, metrics
        self._clock = clock
        self.applied: dict[str, int] | None = None
        """Generations applied, by model type (or `*`); None until the first step."""
        self.epoch = ""
        """The epoch `applied` belongs to."""
        self.seq = 0
        """The sequence number of the last snapshot applied."""
        self.outcomes: dict[str, ModelAck] = {}
        self.canaries: dict[str, Canary] = {}
        """The canaries this node last applied (or tried to)."""
        self._bad_pins: dict[str, str] = {}

    def step(self, snap: Snapshot) -> Reconciled:
        """Apply what differs between `snap` and what this node applied; the ack to write."""
        if self.applied is None:
            return self._first(snap)
        if snap.epoch != self.epoch:
            # Redis lost its data: counters restarted, so a generation we "applied" may name a
            # new change. Forget them all and apply the whole desired state again.
            log.warning("cluster epoch %r -> %r: re-applying every change", self.epoch, snap.epoch)
            self.applied, self.epoch = {}, snap.epoch
        applied_at = self._clock()
        outcomes = self._adopt_pins(snap, "cluster")
        # After the pins: a promote's pin swaps the canary's version in first, then the canary ends.
        fresh = {
            name
            for name, generation in snap.generations.items()
            if self.applied.get(name) != generation
            and (c := snap.changes.get(name)) is not None
            and c.kind is ChangeKind.CANARY
        }
        for name, outcome in self._adopt_canaries(snap, fresh, "cluster").items():
            outcomes.setdefault(name, outcome)
        for name, generation in sorted(snap.generations.items()):
            if self.applied.get(name) == generation:
                continue
            change = snap.changes.get(name)
            if name in outcomes:  # a pin/unpin applied just above
                pass
            elif change is None:
                why = snap.bad_changes.get(name, "no change record")
                outcomes[name] = self._failure(name, f"cannot apply generation {generation}: {why}")
            elif name == ALL:
                each = [self._safely(mt, self._reload, mt, None) for mt in self.reloads.model_types()]
                outcomes[ALL] = _combine(each)
            elif change.kind is ChangeKind.RELOAD:
                outcomes[name] = self._safely(name, self._reload, name, change.version or None)
            else:  # a pin/unpin this node had already adopted
                served = self.reloads.served(name)
                outcomes[name] = Applied(name, Outcome.OK, served, served, "already applied")
            self.applied[name] = generation
            self._record(name, outcomes[name], change, snap, applied_at)
        self._note_bad_pins(snap)
        return Reconciled(self._ack(snap), outcomes)

    def _first(self, snap: Snapshot) -> Reconciled:
        # First contact: adopt the state as it is; nothing is cached yet, so nothing reloads.
        self._adopt_pins(snap, "startup")
        started = self._adopt_canaries(snap, set(), "startup")
        for name, outcome in started.items():  # a canary that cannot load is a failed ack
            self._record(name, outcome, snap.changes.get(name), snap, self._clock(), observe=False)
        self.applied, self.epoch = dict(snap.generations), snap.epoch
        self._note_bad_pins(snap)
        # Not "applied": a node's start is not news the cluster view must show at once.
        return Reconciled(self._ack(snap), {})

    def _reload(self, model_type: str, version: str | None) -> Applied:
        [outcome] = self.reloads.reload(model_type, version, source="cluster")
        return outcome

    def _adopt_pins(self, snap: Snapshot, source: str) -> dict[str, Applied]:
        """Apply pin changes one model type at a time, so one that raises fails alone."""
        current = self.reloads.pins()
        wanted = dict(snap.pins)
        for model_type in snap.bad_pins:  # an unreadable pin changes nothing here
            if model_type in current:
                wanted[model_type] = current[model_type]
        out: dict[str, Applied] = {}
        for model_type in sorted(set(wanted) | set(current)):
            if wanted.get(model_type) == current.get(model_type):
                continue
            out[model_type] = self._safely(
                model_type, self._set_pin, model_type, wanted.get(model_type), source
            )
        return out

    def _set_pin(self, model_type: str, version: str | None, source: str) -> Applied:
        return self.reloads.set_pin(model_type, version, source=source)

    def _adopt_canaries(self, snap: Snapshot, fresh: set[str], source: str) -> dict[str, Applied]:
        """Start, change or end canaries to match the snapshot; one that raises fails alone.

        A canary is (re)applied when it differs from what this node last applied, or when a
        new `canary` change names it (so repeating the call retries a load that failed).
        """
        wanted = dict(snap.canaries)
        for model_type in snap.bad_canaries:  # an unreadable canary changes nothing here
            if model_type in self.canaries:
                wanted[model_type] = self.canaries[model_type]
        out: dict[str, Applied] = {}
        for model_type in sorted(set(wanted) | set(self.canaries)):
            want = wanted.get(model_type)
            if want == self.canaries.get(model_type) and model_type not in fresh:
                continue
            if want is None:
                out[model_type] = self._safely(model_type, self._clear_canary, model_type, source)
                self.canaries.pop(model_type, None)
            else:
                out[model_type] = self._safely(model_type, self._set_canary, model_type, want, source)
                self.canaries[model_type] = want
        return out

    def _set_canary(self, model_type: str, canary: Canary, source: str) -> Applied:
        return self.reloads.set_canary(model_type, canary.version, canary.percent, source=source)

    def _clear_canary(self, model_type: str, source: str) -> Applied:
        return self.reloads.clear_canary(model_type, source=source)

    def _safely(self, model_type: str, fn: Callable[..., Applied], *args: Any) -> Applied:
        try:
            return fn(*args)
        except ClusterUnavailable:
            raise
        except Exception as exc:  # any registry error: this model fails, the others go on
            log.exception("applying %s failed", model_type)
            self.metrics.reloads.labels("cluster", "failed").inc()
            return self._failure(model_type, f"{type(exc).__name__}: {exc}")

    def _failure(self, model_type: str, detail: str) -> Applied:
        served = self.reloads.served(model_type)
        if served:
            detail = f"{detail}; still serving {served}"
        return Applied(model_type, Outcome.FAILED, served, served, detail)

    def _note_bad_pins(self, snap: Snapshot) -> None:
        """An unusable pin is a failed outcome in the ack until someone fixes it."""
        for model_type in set(self._bad_pins) - set(snap.bad_pins):
            self.outcomes.pop(model_type, None)
        for model_type, why in snap.bad_pins.items():
            if self._bad_pins.get(model_type) != why:
                change = snap.changes.get(model_type)
                self.outcomes[model_type] = ModelAck(
                    model_type,
                    Outcome.FAILED,
                    self.reloads.served(model_type),
                    detail=why,
                    epoch=snap.epoch,
                    seq=change.seq if change else snap.seq,
                    generation=change.generation if change else None,
                )
        self._bad_pins = dict(snap.bad_pins)

    def _record(
        self,
        name: str,
        outcome: Applied,
        change: Change | None,
        snap: Snapshot,
        applied_at: float,
        *,
        observe: bool = True,
    ) -> None:
        ts = change.ts if change else applied_at
        if observe:  # not at start-up: a node's start is no measure of propagation
            self.metrics.reload_propagation_seconds.observe(max(0.0, applied_at - ts))
        if observe and change is not None and change.traceparent:
            tracing.applied(
                change.traceparent,
                f"apply {change.kind.value}",
                applied_at,
                **{
                    "modelcache.node_id": self.node_id,
                    "modelcache.model_type": name,
                    "modelcache.change_seq": change.seq,
                    "modelcache.outcome": outcome.outcome.value,
                    "modelcache.detail": outcome.detail,
                },
            )
        self.outcomes[name] = outcome.to_ack(
            epoch=change.epoch if change else snap.epoch,
            seq=change.seq if change else snap.seq,
            generation=change.generation if change else None,
            # From the change being published to this node serving the result.
            propagation_ms=round((self._clock() - ts) * 1000, 3),
        )

    def _ack(self, snap: Snapshot) -> Ack:
        self.seq = snap.seq
        return Ack(
            self.node_id, snap.epoch, snap.seq, self._clock(), dict(self.outcomes), self.reloads.serving()
        )


def _combine(outcomes: list[Applied]) -> Applied:
    failed = [o for o in outcomes if not o.ok]
    detail = (
        "; ".join(f"{o.model_type}: {o.detail}" for o in failed) or f"reloaded {len(outcomes)} model type(s)"
    )
    return Applied(ALL, Outcome.FAILED if failed else Outcome.OK, None, None, detail)
