"""The cluster's desired state in Redis: pins, canaries, reload generations, popularity.

Desired state lives in keys; every change bumps a generation and the global
sequence and publishes an event in one Lua script, so keys and event can never
disagree. Events only wake nodes: a node that missed one converges by re-reading
the keys (invariant 3). Whether a change is allowed (the registry has the
version) is the caller's question (coordinator.control); this module only reads
and writes the state. Membership and acknowledgements are a peer over the same
link (coordinator.membership).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.errors import CanaryNotFound, InvalidName
from coordinator.link import Link, LogThrottle
from coordinator.scripts import CHANGE
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Canary, Change, ChangeKind, WireError

__all__ = ["ClusterState", "Snapshot"]

log = logging.getLogger("modelcache.state")


@dataclass(frozen=True)
class Snapshot:
    """The desired state, read in one transaction and validated; junk is set aside, not raised."""

    pins: dict[str, str]
    generations: dict[str, int]
    changes: dict[str, Change]
    seq: int
    epoch: str = ""
    bad_pins: dict[str, str] = field(default_factory=dict)
    """model_type (as stored) -> why its pin cannot be applied."""
    bad_changes: dict[str, str] = field(default_factory=dict)
    """field -> why its change record cannot be read."""
    canaries: dict[str, Canary] = field(default_factory=dict)
    bad_canaries: dict[str, str] = field(default_factory=dict)
    """model_type (as stored) -> why its canary cannot be applied."""


class ClusterState:
    """Reads and changes the cluster's desired state over one link (sync API, short timeouts)."""

    def __init__(
        self,
        link: Link,
        origin: str = "cli",
        *,
        replica_timeout_s: float = 1.0,
        trace_context: Callable[[], str] | None = None,
    ) -> None:
        self.link = link
        self.origin = origin
        """Who publishes: recorded in every change (`cli@host`, a node id)."""
        self.replica_timeout_s = replica_timeout_s
        """How long a change waits for a replica to confirm it (only when the primary has one)."""
        self.trace_context = trace_context
        """The caller's W3C `traceparent` ("" for none), recorded in each change so every node's
        apply joins the trace of the call that made it (a node passes node.tracing's)."""
        self._change = link.script(CHANGE)

    # -- changes -----------------------------------------------------------
    def publish(
        self, kind: ChangeKind, model_type: str, version: str = "", canary: Canary | None = None
    ) -> Change:
        """Change the state and announce it in one step; seq 0 when it changed nothing.

        A PROMOTE with no canary running raises CanaryNotFound (InvalidName if its record is junk).
        """
        ts = time.time()
        k = self.link.keys
        raw, replicas, *why = self.link.call(
            f"publish a {kind.value}",
            self._change,
            [k.pins, k.generations, k.changes, k.seq, k.epoch, k.canaries],
            [
                kind.value,
                model_type,
                version,
                self.origin,
                repr(ts),
                k.events,
                secrets.token_hex(8),
                canary.to_json() if canary is not None else "",
                self.trace_context() if self.trace_context is not None else "",
            ],
        )
        if not raw and kind is ChangeKind.PROMOTE:
            if why and why[0] == "unreadable":
                raise InvalidName(
                    "canary", model_type, "its record in Redis is unreadable; abort it and start it again"
                )
            raise CanaryNotFound(model_type)
        if not raw:  # nothing changed, nothing published
            return Change(kind, model_type, version, 0, 0, ts, origin=self.origin)
        # Parse what the script wrote, so the caller holds exactly the change nodes will see.
        change = Change.from_json(raw)
        if int(replicas) == 0:
            return change
        # An acknowledged change must survive a failover: confirm a replica has it.
        acked = self.link.call(
            f"confirm the {kind.value} (change #{change.seq}, applied on the primary) reached a replica",
            self.link.client.wait,
            1,
            max(1, int(self.replica_timeout_s * 1000)),
        )
        if not acked:
            log.warning(
                "%s: no replica confirmed it within %gs; a failover now could lose it",
                change.summary(),
                self.replica_timeout_s,
            )
        return replace(change, replicated=bool(acked))

    def canaries(self) -> dict[str, Canary]:
        return self.read().canaries

    # -- reading -----------------------------------------------------------
    def read(self) -> Snapshot:
        """The desired state; values that fail validation are set aside and logged, never raised."""

        def _read() -> list[Any]:
            pipe = self.link.client.pipeline(transaction=True)
            k = self.link.keys
            pipe.hgetall(k.pins).hgetall(k.generations).hgetall(k.changes).get(k.seq).get(k.epoch)
            pipe.hgetall(k.canaries)
            return pipe.execute()

        pins, gens, changes, seq, epoch, canaries = self.link.call("read cluster state", _read)
        snap = _snapshot(pins, gens, changes, seq, epoch, self.link.throttle)
        good: dict[str, Canary] = {}
        bad: dict[str, str] = {}
        for model_type, raw in canaries.items():
            try:
                good[validate_model_type(model_type)] = Canary.from_json(raw)
            except (InvalidName, WireError) as exc:
                bad[model_type[:200]] = f"canary unusable: {exc}"
                self.link.throttle.warning(
                    f"canary:{model_type[:200]}", "ignoring canary %r: %s", model_type, exc
                )
        return replace(snap, canaries=good, bad_canaries=bad)

    def pins(self) -> dict[str, str]:
        return self.read().pins

    # -- popularity (warm start) -------------------------------------------
    def add_popularity(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return

        def _add() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            for model_type, n in counts.items():
                pipe.zincrby(self.link.keys.popularity, n, model_type)
            pipe.execute()

        self.link.call("record popularity", _add)

    def popular(self, n: int) -> list[str]:
        k, client = self.link.keys, self.link.client
        names = self.link.call("read popularity", client.zrevrange, k.popularity, 0, n - 1)
        out = []
        for name in names:
            try:
                out.append(validate_model_type(name))
            except InvalidName as exc:
                self.link.throttle.warning("popular", "ignoring popular model type: %s", exc)
        return out


def _snapshot(
    pins: Mapping[str, str],
    gens: Mapping[str, str],
    changes: Mapping[str, str],
    seq: str | None,
    epoch: str | None,
    throttle: LogThrottle,
) -> Snapshot:
    good_pins: dict[str, str] = {}
    bad_pins: dict[str, str] = {}
    for model_type, version in pins.items():
        try:
            good_pins[validate_model_type(model_type)] = normalize_version(version)
        except InvalidName as exc:
            bad_pins[model_type[:200]] = f"pin unusable: {exc}"
            throttle.warning(f"pin:{model_type[:200]}", "ignoring pin %r=%r: %s", model_type, version, exc)
    generations: dict[str, int] = {}
    for name, value in gens.items():
        try:
            generations[name] = int(value)
        except ValueError:
            throttle.warning(f"gen:{name[:200]}", "ignoring generation %r=%r: not an integer", name, value)
    good_changes: dict[str, Change] = {}
    bad_changes: dict[str, str] = {}
    for name, raw in changes.items():
        try:
            good_changes[name] = Change.from_json(raw)
        except WireError as exc:
            bad_changes[name[:200]] = str(exc)
            throttle.warning(f"change:{name[:200]}", "ignoring change record %r: %s", name, exc)
    try:
        seq_n = int(seq or 0)
    except ValueError:
        throttle.warning("seq", "sequence counter %r is not an integer; reading it as 0", seq)
        seq_n = 0
    return Snapshot(
        pins=good_pins,
        generations=generations,
        changes=good_changes,
        seq=seq_n,
        epoch=(epoch or "")[:64],
        bad_pins=bad_pins,
        bad_changes=bad_changes,
    )
