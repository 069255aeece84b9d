"""Reconcile: apply the cluster's desired state (pins, canaries, reloads) here and record the outcomes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from coordinator.errors import ClusterUnavailable
from coordinator.keys import ALL
from coordinator.state import ClusterState, Snapshot
from coordinator.wire import Ack, Canary, Change, ChangeKind, ModelAck, Outcome
from node.metrics import NodeMetrics
from node.service import ModelService
from node.service import Outcome as Applied

log = logging.getLogger("modelcache.sync")


class Reconciler:
    """ClusterSync's reconcile step (mixed into node.sync): read the state, apply what differs, ack."""

    node_id: str
    state: ClusterState
    service: ModelService
    metrics: NodeMetrics
    _applied: dict[str, int] | None
    _epoch: str
    _outcomes: dict[str, ModelAck]
    _bad_pins: dict[str, str]
    _canaries: dict[str, Canary]
    _seq: int

    def _set_connected(self, connected: bool, why: str = "") -> None:
        raise NotImplementedError  # ClusterSync's

    def _heartbeat(self) -> None:
        raise NotImplementedError  # ClusterSync's

    # -- reconcile -------------------------------------------------------------
    def _reconcile(self) -> None:
        snap = self.state.read()
        self._set_connected(True)
        if self._applied is None:
            # First contact: adopt the state as it is; nothing is cached yet, so nothing reloads.
            self._adopt_pins(snap, "startup")
            started = self._adopt_canaries(snap, set(), "startup")
            for name, outcome in started.items():  # a canary that cannot load is a failed ack
                self._record(name, outcome, snap.changes.get(name), snap, time.time(), observe=False)
            self._applied, self._epoch = dict(snap.generations), snap.epoch
            self._note_bad_pins(snap)
            self._write_ack(snap)
            return
        if snap.epoch != self._epoch:
            # Redis lost its data: counters restarted, so a generation we "applied" may name a
            # new change. Forget them all and apply the whole desired state again.
            log.warning("cluster epoch %r -> %r: re-applying every change", self._epoch, snap.epoch)
            self._applied, self._epoch = {}, snap.epoch
        applied_at = time.time()
        outcomes = self._adopt_pins(snap, "cluster")
        # After the pins: a promote's pin swaps the canary's version in first, then the canary ends.
        fresh = {
            name
            for name, generation in snap.generations.items()
            if self._applied.get(name) != generation
            and (c := snap.changes.get(name)) is not None
            and c.kind is ChangeKind.CANARY
        }
        for name, outcome in self._adopt_canaries(snap, fresh, "cluster").items():
            outcomes.setdefault(name, outcome)
        for name, generation in sorted(snap.generations.items()):
            if self._applied.get(name) == generation:
                continue
            change = snap.changes.get(name)
            if name in outcomes:  # a pin/unpin applied just above
                pass
            elif change is None:
                why = snap.bad_changes.get(name, "no change record")
                outcomes[name] = self._failure(name, f"cannot apply generation {generation}: {why}")
            elif name == ALL:
                outcomes[ALL] = _combine([self._safely(mt, self._reload, mt, None) for mt in self._types()])
            elif change.kind is ChangeKind.RELOAD:
                outcomes[name] = self._safely(name, self._reload, name, change.version or None)
            else:  # a pin/unpin this node had already adopted
                served = self.service.served_version(name)
                outcomes[name] = Applied(name, "ok", served, served, "already applied")
            self._applied[name] = generation
            self._record(name, outcomes[name], change, snap, applied_at)
        self._note_bad_pins(snap)
        self._write_ack(snap)
        if outcomes:
            self._heartbeat()  # the cluster view shows the new state at once

    def _types(self) -> list[str]:
        return sorted(set(self.service.cached_versions()) | set(self.service.serving()))

    def _reload(self, model_type: str, version: str | None) -> Applied:
        [outcome] = self.service.reload(model_type, version, source="cluster")
        return outcome

    def _adopt_pins(self, snap: Snapshot, source: str) -> dict[str, Applied]:
        """Apply pin changes one model type at a time, so one that raises fails alone."""
        current = self.service.pins
        wanted = dict(snap.pins)
        for model_type in snap.bad_pins:  # an unreadable pin changes nothing here
            if model_type in current:
                wanted[model_type] = current[model_type]
        out: dict[str, Applied] = {}
        for model_type in sorted(set(wanted) | set(current)):
            if wanted.get(model_type) == current.get(model_type):
                continue
            step = {k: v for k, v in self.service.pins.items() if k != model_type}
            if model_type in wanted:
                step[model_type] = wanted[model_type]
            out[model_type] = self._safely(model_type, self._set_pins, model_type, step, source)
        return out

    def _adopt_canaries(self, snap: Snapshot, fresh: set[str], source: str) -> dict[str, Applied]:
        """Start, change or end canaries to match Redis; one that raises fails alone.

        A canary is (re)applied when it differs from what this node last applied, or when a
        new `canary` change names it (so repeating the call retries a load that failed).
        """
        wanted = dict(snap.canaries)
        for model_type in snap.bad_canaries:  # an unreadable canary changes nothing here
            if model_type in self._canaries:
                wanted[model_type] = self._canaries[model_type]
        out: dict[str, Applied] = {}
        for model_type in sorted(set(wanted) | set(self._canaries)):
            want = wanted.get(model_type)
            if want == self._canaries.get(model_type) and model_type not in fresh:
                continue
            if want is None:
                out[model_type] = self._safely(model_type, self._clear_canary, model_type, source)
                self._canaries.pop(model_type, None)
            else:
                out[model_type] = self._safely(
                    model_type, self._set_canary, model_type, want.version, want.percent, source
                )
                self._canaries[model_type] = want
        return out

    def _set_canary(self, model_type: str, version: str, percent: float, source: str) -> Applied:
        return self.service.set_canary(model_type, version, percent, source=source)

    def _clear_canary(self, model_type: str, source: str) -> Applied:
        return self.service.clear_canary(model_type, source=source)

    def _set_pins(self, model_type: str, pins: dict[str, str], source: str) -> Applied:
        results = self.service.set_pins(pins, source=source)
        served = self.service.served_version(model_type)
        return next(
            (r for r in results if r.model_type == model_type), Applied(model_type, "ok", served, served)
        )

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
        served = self.service.served_version(model_type)
        if served:
            detail = f"{detail}; still serving {served}"
        return Applied(model_type, "failed", served, served, detail)

    def _note_bad_pins(self, snap: Snapshot) -> None:
        """An unusable pin is a failed outcome in the ack until someone fixes it."""
        for model_type in set(self._bad_pins) - set(snap.bad_pins):
            self._outcomes.pop(model_type, None)
        for model_type, why in snap.bad_pins.items():
            if self._bad_pins.get(model_type) != why:
                change = snap.changes.get(model_type)
                self._outcomes[model_type] = ModelAck(
                    model_type,
                    Outcome.FAILED,
                    self.service.served_version(model_type),
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
        self._outcomes[name] = ModelAck(
            model_type=outcome.model_type,
            outcome=Outcome(outcome.outcome),
            version=outcome.version,
            previous=outcome.previous,
            detail=outcome.detail[:2000],
            epoch=change.epoch if change else snap.epoch,
            seq=change.seq if change else snap.seq,
            generation=change.generation if change else None,
            # From the change being published to this node serving the result.
            propagation_ms=round((time.time() - ts) * 1000, 3),
        )

    def _write_ack(self, snap: Snapshot) -> None:
        self._seq = snap.seq
        ack = Ack(
            self.node_id, snap.epoch, snap.seq, time.time(), dict(self._outcomes), self.service.serving()
        )
        self.state.write_ack(ack)


def _combine(outcomes: list[Applied]) -> Applied:
    failed = [o for o in outcomes if o.outcome != "ok"]
    detail = (
        "; ".join(f"{o.model_type}: {o.detail}" for o in failed) or f"reloaded {len(outcomes)} model type(s)"
    )
    return Applied(ALL, "failed" if failed else "ok", None, None, detail)
