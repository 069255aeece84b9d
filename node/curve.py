"""An online hit-ratio curve: the hit ratio this node would have at 1x, 2x and 4x its capacity.

Ghost caches: one keys-only copy of the node's own policy per capacity
factor (`factor * max_items` slots and, under a byte budget, `factor *
max_cost` bytes) sees every lookup the real cache sees and counts its own
hits. Keys are model versions, so the shadows hold 7x the capacity in keys
(plus the policy's own bounded history): constant memory, whatever the
traffic. Replaying the node's policy itself, rather than LRU stack distances,
keeps the estimate right for LFU, ARC and the cost policy too.

What a shadow cannot see at the moment of a miss (the model is not loaded
yet) is its resident bytes and load time; the first time the real cache
loads a key they are learned (`learn`) and corrected in every shadow, and a
key never loaded is charged the mean of those that were. Idle expiry is not
modelled (a node with an idle TTL measures a little less than its 1x point).

Hit counts halve every `window` lookups, so the curve follows the recent
traffic mix rather than the node's whole life.

Off the hot path: `record`, `learn` and `replaced` only append an event to a
queue (the cache calls them under its lock, `guard`, so they must cost next to
nothing); the shadows replay the queue under the curve's own lock, in batches
of `batch`, in the thread that finds the batch due (`drain`, after the cache
has released its lock) or when the curve is read. A hit therefore never
waits on the shadows, and the queue stays bounded. The queue is only ever
appended to and taken under `guard`, and taken only by the holder of the
curve's lock (lock order: curve, then guard; never the reverse), so no event
is lost or replayed out of order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from node.policies import Cache, make_policy

K = TypeVar("K", bound=Hashable)

FACTORS = (1, 2, 4)


def _no_time() -> float:
    return 0.0


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curve: `hit_ratio` at `capacity` models (and `max_bytes`, under a byte budget)."""

    factor: int
    capacity: int
    max_bytes: int | None
    hit_ratio: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"capacity": self.capacity, "hit_ratio": round(self.hit_ratio, 4)}
        if self.max_bytes is not None:
            out["max_bytes"] = self.max_bytes
        return out


class HitRatioCurve(Generic[K]):
    """Ghost caches of the node's policy at each capacity factor, fed through a queue of events."""

    def __init__(
        self,
        policy: str,
        max_items: int,
        max_cost: int | None = None,
        factors: tuple[int, ...] = FACTORS,
        window: int = 100_000,
        batch: int = 64,
        guard: threading.Lock | None = None,
    ) -> None:
        self.factors, self.window, self.batch = factors, window, batch
        self._events: list[tuple[str, K, object, object]] = []
        self._guard = guard or threading.Lock()  # held by whoever appends events
        self._lock = threading.Lock()  # held while the shadows replay events
        self._shadows: list[Cache[K, bool]] = [
            make_policy(policy, f * max_items, f * max_cost if max_cost else None, None, _no_time)
            for f in factors
        ]
        self._hits = [0.0] * len(factors)
        self._lookups = 0.0
        # Learned (resident bytes, load seconds) per key; bounded like the largest shadow's history.
        self._facts: OrderedDict[K, tuple[int, float]] = OrderedDict()
        self._max_facts = 2 * max(factors) * max_items

    # -- events (O(1), called with `guard` held) ----------------------------------
    def record(self, key: K) -> None:
        """One lookup of `key` (a request)."""
        self._events.append(("record", key, None, None))

    def learn(self, key: K, cost: int, load_s: float | None) -> None:
        """The real cache loaded `key`: its resident bytes and load time."""
        self._events.append(("learn", key, cost, load_s))

    def replaced(self, old: K, new: K) -> None:
        """A reload swapped `old` for `new`."""
        self._events.append(("replaced", new, old, None))

    def due(self) -> bool:
        """Whether a batch of events waits (the caller should `drain`, outside its own lock)."""
        return len(self._events) >= self.batch

    def drain(self, wait: bool = False) -> None:
        """Replay the queued events through the shadows (never call it holding `guard`).

        Without `wait`, a drain already under way is left to take these events too.
        """
        if not self._lock.acquire(blocking=wait):
            return
        try:
            self._replay()
        finally:
            self._lock.release()

    def _replay(self) -> None:
        while True:
            with self._guard:
                events, self._events = self._events, []
            if not events:
                return
            for kind, key, a, b in events:
                if kind == "record":
                    self._record(key)
                elif kind == "learn":
                    self._learn(key, a, b)  # type: ignore[arg-type]
                else:
                    self._replaced(a, key)  # type: ignore[arg-type]

    # -- the shadows ------------------------------------------------------------
    def _record(self, key: K) -> None:
        """One lookup of `key`, as every shadow would have served it."""
        hits = self._hits
        for i, shadow in enumerate(self._shadows):
            if shadow.get(key) is None:
                cost, load_s = self._facts_for(key)
                shadow.put(key, True, cost, load_s=load_s)
            else:
                hits[i] += 1
        self._lookups += 1
        if self._lookups >= self.window:
            self._lookups /= 2
            self._hits = [h / 2 for h in self._hits]

    def _learn(self, key: K, cost: int, load_s: float | None) -> None:
        """Remember `key`'s bytes and load time, and correct them in every shadow holding it."""
        known = self._facts.get(key)
        load_s = load_s if load_s is not None else (known[1] if known else self._mean_load_s())
        self._facts[key] = (cost, load_s)
        self._facts.move_to_end(key)
        while len(self._facts) > self._max_facts:
            self._facts.popitem(last=False)
        for shadow in self._shadows:
            if key in shadow:
                shadow.update(key, cost, load_s)

    def _replaced(self, old: K, new: K) -> None:
        """Shadows holding `old` hold `new` instead, with its history."""
        cost, load_s = self._facts_for(new)
        for shadow in self._shadows:
            if old in shadow:
                shadow.pop(old)
                shadow.put(new, True, cost, like=old, load_s=load_s)

    def points(self) -> list[CurvePoint]:
        """The estimated hit ratio at each factor (0.0 before the first lookup), all events replayed."""
        with self._lock:
            self._replay()
            return [
                CurvePoint(
                    factor=f,
                    capacity=shadow.max_items,
                    max_bytes=shadow.max_cost,
                    hit_ratio=hits / self._lookups if self._lookups else 0.0,
                )
                for f, shadow, hits in zip(self.factors, self._shadows, self._hits, strict=True)
            ]

    def _facts_for(self, key: K) -> tuple[int, float]:
        known = self._facts.get(key)
        if known is not None:
            return known
        costs = [c for c, _ in self._facts.values()]
        return (sum(costs) // len(costs) if costs else 0), self._mean_load_s()

    def _mean_load_s(self) -> float:
        times = [s for _, s in self._facts.values()]
        return sum(times) / len(times) if times else 1.0
