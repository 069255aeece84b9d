"""The reconciler as a table: snapshots of the desired state in, outcomes and acks out. No Redis.

Each case is a list of steps; each step hands the reconciler one `Snapshot` (as
coordinator.state would read it) and states what it must apply and acknowledge.
The node under it is real (registry, loads, resolver, reloads over tiny models);
tests/node/test_sync.py keeps the wiring through a real Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from coordinator.keys import ALL
from coordinator.registry import Registry
from coordinator.state import Snapshot
from coordinator.wire import Canary, Change, ChangeKind, Outcome
from node.parts import NodeParts
from node.reconcile import Reconciler
from tests.helpers import PublishFn
from tests.node.parts import make_node

EPOCH = "e1"


def change(
    kind: ChangeKind, model_type: str, version: str = "", *, seq: int, gen: int, epoch: str = EPOCH
) -> Change:
    return Change(kind, model_type, version, seq, gen, ts=1000.0 + seq, epoch=epoch, origin="table")


def snap(
    *changes: Change,
    pins: dict[str, str] | None = None,
    canaries: dict[str, Canary] | None = None,
    epoch: str = EPOCH,
    bad_pins: dict[str, str] | None = None,
) -> Snapshot:
    """A snapshot whose generations and seq follow from `changes` (the last change per model wins)."""
    last = {c.model_type: c for c in changes}
    return Snapshot(
        pins=dict(pins or {}),
        generations={mt: c.generation for mt, c in last.items()},
        changes=last,
        seq=max((c.seq for c in changes), default=0),
        epoch=epoch,
        bad_pins=dict(bad_pins or {}),
        canaries=dict(canaries or {}),
    )


@dataclass(frozen=True)
class Step:
    snapshot: Snapshot
    applied: dict[str, tuple[Outcome, str | None]] = field(default_factory=dict)
    """What the step must apply: model type -> (outcome, version served afterwards)."""
    acked: dict[str, Outcome] = field(default_factory=dict)
    """Outcomes the ack must carry (besides those of `applied`)."""
    serving: dict[str, str] = field(default_factory=dict)
    """What the node must serve by default afterwards (checked per model type named)."""
    canary: dict[str, str | None] = field(default_factory=dict)
    """model type -> the canary version active on the node afterwards (None: none)."""


PIN_M_1 = change(ChangeKind.PIN, "m", "1.0", seq=1, gen=1)
RELOAD_M = change(ChangeKind.RELOAD, "m", seq=2, gen=2)
CANARY_M = change(ChangeKind.CANARY, "m", "1.0", seq=1, gen=1)
CANARY_M_AGAIN = change(ChangeKind.CANARY, "m", "1.0", seq=2, gen=2)
TEN = {"m": Canary("1.0", 10.0)}

CASES: dict[str, list[Step]] = {
    "first contact adopts pins and reports nothing as applied": [
        Step(snap(PIN_M_1, pins={"m": "1.0"}), applied={}, serving={"m": "1.0"}),
    ],
    "a pin is applied once, then answered as already applied": [
        Step(snap()),
        Step(snap(PIN_M_1, pins={"m": "1.0"}), applied={"m": (Outcome.OK, "1.0")}, serving={"m": "1.0"}),
        Step(snap(PIN_M_1, pins={"m": "1.0"}), applied={}),
    ],
    "an epoch change re-applies every change": [
        Step(snap(RELOAD_M)),
        Step(snap(RELOAD_M), applied={}),
        Step(
            snap(change(ChangeKind.RELOAD, "m", seq=2, gen=2, epoch="e2"), epoch="e2"),
            applied={"m": (Outcome.OK, "2.0")},
        ),
    ],
    "an unusable pin is a failed ack until it is fixed, and changes nothing": [
        Step(snap()),
        Step(
            snap(pins={}, bad_pins={"x": "pin unusable: invalid version"}),
            applied={},
            acked={"x": Outcome.FAILED},
            serving={"m": "2.0"},
        ),
        Step(snap(), applied={}, acked={}),
    ],
    "a canary starts, and a fresh canary change re-applies the same canary": [
        Step(snap()),
        Step(snap(CANARY_M, canaries=TEN), applied={"m": (Outcome.OK, "1.0")}, canary={"m": "1.0"}),
        Step(snap(CANARY_M, canaries=TEN), applied={}),  # same canary, no new change: nothing to do
        Step(snap(CANARY_M_AGAIN, canaries=TEN), applied={"m": (Outcome.OK, "1.0")}, canary={"m": "1.0"}),
        Step(
            snap(change(ChangeKind.CANARY_ABORT, "m", seq=3, gen=3)),
            applied={"m": (Outcome.OK, "2.0")},
            canary={"m": None},
        ),
    ],
    "reload-all reloads every model type this node serves, as one outcome": [
        Step(snap()),
        Step(snap(change(ChangeKind.RELOAD, ALL, seq=1, gen=1)), applied={ALL: (Outcome.OK, None)}),
    ],
    "a generation without a readable change record fails alone": [
        Step(snap()),
        Step(
            Snapshot(pins={}, generations={"m": 5}, changes={}, seq=5, epoch=EPOCH),
            applied={"m": (Outcome.FAILED, "2.0")},
        ),
    ],
}


@pytest.fixture
def node(registry: Registry, publish: PublishFn) -> NodeParts:
    publish("m", "1.0")
    publish("m", "2.0")
    publish("n", "1.0")
    parts = make_node(registry, cache_size=3)
    assert parts.service.warm(["m", "n"]) == ["m:2.0", "n:1.0"]
    return parts


@pytest.mark.parametrize("steps", CASES.values(), ids=list(CASES))
def test_reconcile_table(node: NodeParts, steps: list[Step]) -> None:
    reconciler = Reconciler("n1", node.reloads, node.metrics, clock=lambda: 2000.0)
    for i, step in enumerate(steps):
        result = reconciler.step(step.snapshot)
        got = {mt: (a.outcome, a.version) for mt, a in result.applied.items()}
        assert got == step.applied, f"step {i}: {result.applied}"
        ack = result.ack
        assert (ack.node_id, ack.epoch, ack.seq) == ("n1", step.snapshot.epoch, step.snapshot.seq)
        for model_type, (outcome, _version) in step.applied.items():
            assert ack.outcomes[model_type].outcome is outcome, f"step {i}: {model_type}"
            assert ack.outcomes[model_type].epoch == step.snapshot.epoch
        for model_type, outcome in step.acked.items():
            assert ack.outcomes[model_type].outcome is outcome, f"step {i}: {model_type}"
        if not step.acked and not step.applied and i > 0:
            assert "x" not in ack.outcomes  # a fixed pin leaves the ack
        for model_type, version in step.serving.items():
            assert node.resolver.served(model_type) == version, f"step {i}: {model_type}"
        for model_type, version in step.canary.items():
            active = node.reloads.canaries().get(model_type)
            assert (active.version if active else None) == version, f"step {i}: {model_type}"


def test_one_model_that_raises_fails_alone(node: NodeParts, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = Reconciler("n1", node.reloads, node.metrics)
    reconciler.step(snap())
    real_reload = node.reloads.reload

    def reload(model_type: str | None = None, version: str | None = None, *, source: str = "api"):  # type: ignore[no-untyped-def]
        if model_type == "m":
            raise RuntimeError("a bug in one model's reload")
        return real_reload(model_type, version, source=source)

    monkeypatch.setattr(node.reloads, "reload", reload)
    result = reconciler.step(
        snap(change(ChangeKind.RELOAD, "m", seq=1, gen=1), change(ChangeKind.RELOAD, "n", seq=2, gen=1))
    )
    assert result.applied["m"].outcome is Outcome.FAILED and "a bug" in result.applied["m"].detail
    assert result.applied["n"].outcome is Outcome.OK
    assert set(result.ack.outcomes) == {"m", "n"}


def test_an_applied_outcome_names_the_change_it_answers(node: NodeParts) -> None:
    reconciler = Reconciler("n1", node.reloads, node.metrics, clock=lambda: 1003.5)
    reconciler.step(snap())
    pin = change(ChangeKind.PIN, "m", "1.0", seq=3, gen=7)
    ack = reconciler.step(snap(pin, pins={"m": "1.0"})).ack
    outcome = ack.outcomes["m"]
    assert (outcome.epoch, outcome.seq, outcome.generation) == (EPOCH, 3, 7)
    assert (outcome.version, outcome.previous) == ("1.0", "2.0")
    assert outcome.propagation_ms == 500.0  # published at ts 1003.0, applied at 1003.5
    assert ack.serving["m"] == "1.0" and reconciler.seq == 3
