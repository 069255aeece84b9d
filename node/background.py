"""Building blocks of the node's background threads: jittered backoff and health records."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

BASE_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
UNHEALTHY_AFTER = 3
"""Consecutive unexpected errors after which a thread counts as degraded (in /readyz's body)."""


class Backoff:
    """Capped decorrelated jitter: next = min(cap, uniform(base, 3 * previous)).

    Jitter so a fleet that lost Redis together does not reconnect in lockstep.
    """

    def __init__(
        self,
        base: float = BASE_BACKOFF_S,
        cap: float = MAX_BACKOFF_S,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.base, self.cap = base, cap
        # Its own generator, not the module's: a background thread drawing from the global one
        # changes state other code (and hypothesis, in the tests) relies on.
        self._rand = rand or random.Random().random
        self._last = base

    def next(self) -> float:
        high = max(self.base, self._last * 3)
        self._last = min(self.cap, self.base + self._rand() * (high - self.base))
        return self._last

    def reset(self) -> None:
        self._last = self.base


@dataclass
class ThreadHealth:
    errors: int = 0
    consecutive: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class SyncHealth:
    """What /readyz lists as degraded: `problems` is empty while the node keeps in step with the cluster."""

    problems: list[str]
    connected: bool
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.problems
