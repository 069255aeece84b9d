"""Placement: which nodes serve each model, balanced by count, bytes and load, hot models copied.

A pure function over plain values (no Redis, no HAProxy): coordinator.lbagent feeds it the
live nodes and the models' sizes and request rates, publishes the result in Redis, and each
load balancer's agent turns it into an HAProxy map (docs/design.md, "Placement").

Why not the hash ring alone: consistent hashing spreads names only on average (9 names
landed 5/3/1 on 3 nodes), so a set of models that fits the cluster's caches can still
thrash on one node while another idles. Here:

1. Every model gets one home. Homes are dealt out count first (no node more than
   ceil(models x its share of the slots)), then by bytes and load together, largest
   rate and size first, so 20 equal models land 7/7/6 and 9 land 3/3/3. A model keeps its
   previous home while that stays within the bounds, so a small change moves few models.
2. A node whose load is above (1 + hot_margin) x the mean because of one model (a hot
   one) gives that model a copy on the least loaded node with a free cache slot, and the
   model's requests are split between its holders so their loads even out. Only free
   slots take copies: a copy never evicts a cold model that step 1 placed.
3. Each model's share per holder is expressed in `slots` equal parts (the load balancer
   draws one at random per request).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.errors import InvalidName
from coordinator.versions import validate_model_type

__all__ = ["HOT_MARGIN", "SLOTS", "Assignment", "ModelInfo", "NodeInfo", "assign"]

SLOTS = 16
"""Parts of each model's traffic: a holder gets a multiple of 1/16 (6.25%) of its requests."""
HOT_MARGIN = 0.25
"""A node is loaded when its share of the requests is above 1.25x the mean share."""
STAY_BYTES = 1.1
"""A model stays on its previous home while that node holds at most 1.1x the mean bytes."""


@dataclass(frozen=True)
class NodeInfo:
    """A live node: its id (membership) and its cache capacity (its heartbeat's stats)."""

    node_id: str
    slots: int = 3
    max_bytes: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model to place: its size (0: unknown) and its recent request rate (any unit)."""

    name: str
    size_bytes: int = 0
    rate: float = 0.0


Holders = tuple[tuple[str, int], ...]
"""(node_id, slots) per holder, the home first; the slots add up to the assignment's `slots`."""


@dataclass(frozen=True)
class Assignment:
    """The published placement: model -> holders, with a generation bumped by each change."""

    models: dict[str, Holders] = field(default_factory=dict)
    generation: int = 0
    slots: int = SLOTS

    def nodes_of(self, model: str) -> list[str]:
        return [node for node, _ in self.models.get(model, ())]

    def slot_table(self, model: str) -> list[str]:
        """The node for each slot 0..slots-1 (what the load balancer's map holds)."""
        return [node for node, k in self.models.get(model, ()) for _ in range(k)]

    def to_json(self) -> str:
        models = {m: [[n, k] for n, k in holders] for m, holders in sorted(self.models.items())}
        return json.dumps({"generation": self.generation, "slots": self.slots, "models": models})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Assignment:
        """Parse a published assignment; ValueError when it is not one.

        Anyone with Redis access can write this key, and every agent turns its names into
        runtime API commands: a name with a space or a newline would be an injected command."""
        try:
            return cls._parse(json.loads(raw))
        except (TypeError, RecursionError, InvalidName) as exc:
            raise ValueError(f"not an assignment: {str(exc)[:200]}") from exc

    @classmethod
    def _parse(cls, data: Any) -> Assignment:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ValueError("an assignment is a JSON object with 'models'")
        slots, generation = data.get("slots", SLOTS), data.get("generation", 0)
        if not isinstance(slots, int) or not 1 <= slots <= 256 or not isinstance(generation, int):
            raise ValueError("'slots' must be 1..256 and 'generation' an integer")
        models: dict[str, Holders] = {}
        for name, holders in data["models"].items():
            validate_model_type(name)
            pairs = tuple((_node_id(n), int(k)) for n, k in holders)
            if sum(k for _, k in pairs) != slots or any(k < 1 for _, k in pairs):
                raise ValueError(f"model {name!r}: holders' slots must be positive and add up to {slots}")
            models[str(name)] = pairs
        return cls(models, generation, slots)

    def same_placement(self, other: Assignment) -> bool:
        return self.models == other.models and self.slots == other.slots


def assign(
    nodes: Sequence[NodeInfo],
    models: Sequence[ModelInfo],
    previous: Assignment | None = None,
    *,
    slots: int = SLOTS,
    hot_margin: float = HOT_MARGIN,
) -> dict[str, Holders]:
    """Place `models` on `nodes` (see the module docstring); {} when there is no node."""
    if not nodes or not models:
        return {}
    p = _Plan(nodes, models, hot_margin)
    p.place_homes(previous)
    if previous is not None:
        # Stability must not cost balance: keep the old homes only when their counts and bytes
        # come out about as even as placing afresh (homes chosen before the sizes were known can
        # be far off), and their loads within a wider margin: rates wobble, and each move costs
        # a load (a node made hot by one model gets a copy instead).
        fresh = _Plan(nodes, models, hot_margin)
        fresh.place_homes(None)
        if p.imbalance() > max(1.1, fresh.imbalance() + 0.05) or p.load_imbalance() > max(
            1.25, fresh.load_imbalance() + 0.25
        ):
            p = fresh
    p.copy_hot(previous)
    return {m.name: _to_slots(p.pieces[m.name], m.name, p.homes[m.name], slots) for m in p.order}


class _Plan:
    """The working state of one `assign` call: per node its count, bytes and load."""

    def __init__(self, nodes: Sequence[NodeInfo], models: Sequence[ModelInfo], hot_margin: float) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.ids = sorted(self.nodes)
        known = [m.size_bytes for m in models if m.size_bytes > 0]
        fill = sum(known) / len(known) if known else 1.0
        self.size = {m.name: float(m.size_bytes) if m.size_bytes > 0 else fill for m in models}
        self.rate = {m.name: max(0.0, m.rate) for m in models}
        self.total_bytes = sum(self.size.values())
        self.total_rate = sum(self.rate.values())
        # Largest first (LPT) on bytes and load together: the big pieces set the balance.
        self.order = sorted(models, key=lambda m: (-self._weight(m.name), m.name))
        total_slots = sum(max(1, n.slots) for n in nodes)
        self.quota = {
            i: math.ceil(len(models) * max(1, n.slots) / total_slots) for i, n in self.nodes.items()
        }
        self.count = dict.fromkeys(self.ids, 0)
        self.bytes = dict.fromkeys(self.ids, 0.0)
        self.load = dict.fromkeys(self.ids, 0.0)
        self.homes: dict[str, str] = {}
        self.pieces: dict[str, dict[str, float]] = {}
        self.hot_margin = hot_margin

    def _weight(self, model: str) -> float:
        return self.size[model] / (self.total_bytes or 1.0) + self.rate[model] / (self.total_rate or 1.0)

    def _put(self, model: str, node: str, piece: float) -> None:
        self.count[node] += 1
        self.bytes[node] += self.size[model]
        self.load[node] += piece
        self.pieces.setdefault(model, {})[node] = piece

    def place_homes(self, previous: Assignment | None) -> None:
        byte_bound = STAY_BYTES * self.total_bytes / len(self.ids)
        if previous is not None:
            for m in self.order:
                kept = previous.nodes_of(m.name)
                home = kept[0] if kept else None
                if (
                    home in self.nodes
                    and self.count[home] < self.quota[home]
                    and self.bytes[home] + self.size[m.name] <= max(byte_bound, self.size[m.name])
                ):
                    self.homes[m.name] = home
                    self._put(m.name, home, self.rate[m.name])
        tb, tr = self.total_bytes or 1.0, self.total_rate or 1.0
        for m in self.order:
            if m.name in self.homes:
                continue
            open_ = [i for i in self.ids if self.count[i] < self.quota[i]] or self.ids
            home = min(
                open_,
                key=lambda i: (
                    self.count[i] / max(1, self.nodes[i].slots),
                    max((self.bytes[i] + self.size[m.name]) / tb, (self.load[i] + self.rate[m.name]) / tr),
                    i,
                ),
            )
            self.homes[m.name] = home
            self._put(m.name, home, self.rate[m.name])

    def imbalance(self) -> float:
        """The fullest node's count or bytes over the mean (1.0: perfectly even)."""
        n = len(self.ids)
        ratios = [max(self.count.values()) * n / max(1, len(self.order))]
        if self.total_bytes > 0:
            ratios.append(max(self.bytes.values()) * n / self.total_bytes)
        return max(ratios)

    def load_imbalance(self) -> float:
        """The busiest node's load over the mean."""
        if self.total_rate <= 0:
            return 1.0
        return max(self.load.values()) * len(self.ids) / self.total_rate

    def copy_hot(self, previous: Assignment | None) -> None:
        if self.total_rate <= 0 or len(self.ids) < 2:
            return
        mean = self.total_rate / len(self.ids)
        for _ in range(len(self.ids) * 4):  # each pass adds one copy; bounded
            busiest = max(self.ids, key=lambda i: (self.load[i], i))
            if self.load[busiest] <= (1 + self.hot_margin) * mean:
                return
            model = max(self.pieces, key=lambda m: (self.pieces[m].get(busiest, 0.0), m))
            if self.pieces[model].get(busiest, 0.0) <= self.hot_margin * mean:
                return  # no single model makes this node hot: a copy would not help
            was = set(previous.nodes_of(model)) if previous is not None else set()
            targets = [i for i in self.ids if i not in self.pieces[model] and self._fits(i, model)]
            if not targets:
                return
            target = min(targets, key=lambda i: (self.load[i] - (0.1 * mean if i in was else 0.0), i))
            if self.load[target] >= self.load[busiest]:
                return
            self._put(model, target, 0.0)
            self._split(model)

    def _fits(self, node: str, model: str) -> bool:
        n = self.nodes[node]
        if self.count[node] >= n.slots:
            return False
        return n.max_bytes is None or self.bytes[node] + self.size[model] <= n.max_bytes

    def _split(self, model: str) -> None:
        """Water-fill the model's rate over its holders so their loads come out as even as can be."""
        pieces = self.pieces[model]
        base = {n: self.load[n] - piece for n, piece in pieces.items()}
        ordered = sorted(base, key=lambda n: base[n])
        rate = self.rate[model]
        level = base[ordered[0]] + rate
        for k in range(1, len(ordered) + 1):
            level = (rate + sum(base[n] for n in ordered[:k])) / k
            if k == len(ordered) or level <= base[ordered[k]]:
                break
        for n in pieces:
            piece = max(0.0, level - base[n])
            self.load[n] += piece - pieces[n]
            pieces[n] = piece


def _to_slots(pieces: Mapping[str, float], model: str, home: str, slots: int) -> Holders:
    """Largest-remainder rounding of the pieces to `slots` parts; holders left with none drop out."""
    total = sum(pieces.values())
    if total <= 0 or len(pieces) == 1:
        return ((home, slots),)
    exact = {n: slots * p / total for n, p in pieces.items()}
    whole = {n: math.floor(x) for n, x in exact.items()}
    left = slots - sum(whole.values())
    for n in sorted(exact, key=lambda n: (whole[n] - exact[n], n))[:left]:
        whole[n] += 1
    ordered = [home, *sorted(n for n in whole if n != home)]
    return tuple((n, whole[n]) for n in ordered if whole[n] > 0)


def _node_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable() or " " in value:
        raise ValueError(f"not a node id: {str(value)[:40]!r}")
    return value
