"""Cluster-wide truth in Redis: pins, reload generations, membership, acknowledgements.

Desired state lives in keys; every change bumps a generation and the global
sequence and publishes an event in one Lua script, so keys and event can never
disagree. Events only wake nodes: a node that missed one converges by re-reading
the keys (invariant 3).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from coordinator.errors import CanaryNotFound, ClusterStateCorrupt, ClusterUnavailable, InvalidName
from coordinator.keys import ALL, Keys
from coordinator.membership import AckRow, Membership
from coordinator.redis_url import client_for, parse_redis_url
from coordinator.registry import Registry
from coordinator.scripts import BEAT, CHANGE, LIVE
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Canary, Change, ChangeKind, Outcome, WireError

__all__ = [
    "AckRow",
    "Canary",
    "Change",
    "ClusterState",
    "LogThrottle",
    "Snapshot",
    "connect",
    "nothing_changed",
    "parse_percent",
]

log = logging.getLogger("modelcache.state")


class LogThrottle:
    """Log at most once per `interval_s` per key: junk in Redis must not flood the log."""

    def __init__(self, interval_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args: Any, logger: logging.Logger = log) -> None:
        now = self._clock()
        if now - self._last.get(key, -self.interval_s - 1) < self.interval_s:
            self.suppressed += 1
            return
        if len(self._last) > 1000:  # keys may come from junk: bound the memory
            self._last.clear()
        self._last[key] = now
        logger.warning(msg, *args)


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


def connect(url: str, *, timeout: float = 2.0, decode_responses: bool = True) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (callers must never hang on Redis).

    `url` is `redis://...` or `redis+sentinel://h:p[,h:p...]/<master>/<db>`; with Sentinel
    every (re)connection asks for the current primary, so the client follows failovers.
    `decode_responses=False` for the events channel: anyone can PUBLISH any bytes there, and
    decoding inside redis-py raises where the subscriber cannot tell junk from a broken link.
    """
    return client_for(parse_redis_url(url), timeout=timeout, decode_responses=decode_responses)


class ClusterState(Membership):
    """Reads and changes the cluster's state in one Redis (sync API, short timeouts)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        origin: str = "cli",
        *,
        where: str = "",
        replica_timeout_s: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.origin = origin
        self.where = where or _where(client)
        self.replica_timeout_s = replica_timeout_s
        """How long a change waits for a replica to confirm it (only when the primary has one)."""
        self._change = client.register_script(CHANGE)
        self._beat = client.register_script(BEAT)
        self._live = client.register_script(LIVE)
        self.throttle = LogThrottle()

    @classmethod
    def from_url(
        cls, url: str, prefix: str = Keys.prefix, origin: str = "cli", *, replica_timeout_s: float = 1.0
    ) -> ClusterState:
        target = parse_redis_url(url)
        client = client_for(target, timeout=2.0, decode_responses=True)
        return cls(client, Keys(prefix), origin, where=target.describe(), replica_timeout_s=replica_timeout_s)

    def close(self) -> None:
        self.client.close()

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.exceptions.ReadOnlyError as exc:  # a demoted primary: a failover is under way
            raise ClusterUnavailable(
                f"cannot {what}: {self.where} is a read-only replica now ({exc})"
            ) from exc
        except redis.ResponseError as exc:
            # WRONGTYPE, "not an integer": someone wrote junk into a state key. Not an outage;
            # the detail (key, script) is for the log, not for the client.
            log.error("cannot %s: Redis refused the command: %s", what, exc)
            raise ClusterStateCorrupt(
                f"cannot {what}: the cluster state in Redis is corrupt (a key under {self.keys.prefix!r} "
                "holds a value of the wrong type); the node log has the detail"
            ) from exc
        except redis.RedisError as exc:
            raise ClusterUnavailable(
                f"cannot {what}: {self.where} is unreachable "
                f"({type(exc).__name__}: {exc}); check MODELCACHE_REDIS_URL and that Redis runs"
            ) from exc

    # -- changes -----------------------------------------------------------
    def _publish(self, kind: ChangeKind, model_type: str, version: str = "", canary: str = "") -> Change:
        ts = time.time()
        k = self.keys
        raw, replicas, *why = self._call(
            f"publish a {kind.value}",
            self._change,
            [k.pins, k.generations, k.changes, k.seq, k.epoch, k.canaries],
            [kind.value, model_type, version, self.origin, repr(ts), k.events, secrets.token_hex(8), canary],
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
        acked = self._call(
            f"confirm the {kind.value} (change #{change.seq}, applied on the primary) reached a replica",
            self.client.wait,
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

    def pin(self, model_type: str, version: str, registry: Registry) -> Change:
        """Pin `model_type` to `version` everywhere; refused unless the registry has it."""
        version = registry.metadata(model_type, version).version  # raises before publishing
        return self._publish(ChangeKind.PIN, model_type, version)

    def unpin(self, model_type: str) -> Change:
        return self._publish(ChangeKind.UNPIN, validate_model_type(model_type))

    def reload(self, model_type: str | None, version: str | None, registry: Registry) -> Change:
        """Ask every node to reload one model type (or one exact version), or everything."""
        if model_type is None:
            return self._publish(ChangeKind.RELOAD, ALL)
        if version is not None:
            version = registry.metadata(model_type, normalize_version(version)).version
        else:
            registry.versions(model_type)
        return self._publish(ChangeKind.RELOAD, model_type, version or "")

    def canary(self, model_type: str, version: str, percent: object, registry: Registry) -> Change:
        """Send `percent`% of `model_type`'s requests that name no version to `version`, everywhere.

        Refused (InvalidName) unless 0 <= percent <= 100, and unless the registry has the version.
        """
        share = parse_percent(percent)
        version = registry.metadata(model_type, normalize_version(version)).version
        return self._publish(ChangeKind.CANARY, model_type, version, Canary(version, share).to_json())

    def abort_canary(self, model_type: str) -> Change:
        """End the canary of `model_type`: 100% back to the served version (seq 0 if none ran)."""
        return self._publish(ChangeKind.CANARY_ABORT, validate_model_type(model_type))

    def promote(self, model_type: str, registry: Registry) -> Change:
        """Pin the canary's version and end the canary, in one change; CanaryNotFound if none runs."""
        canary = self.read().canaries.get(validate_model_type(model_type))
        if canary is not None:
            registry.metadata(model_type, canary.version)  # removed since? refuse before publishing
        return self._publish(ChangeKind.PROMOTE, model_type)

    def canaries(self) -> dict[str, Canary]:
        return self.read().canaries

    # -- reading -----------------------------------------------------------
    def read(self) -> Snapshot:
        """The desired state; values that fail validation are set aside and logged, never raised."""

        def _read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            k = self.keys
            pipe.hgetall(k.pins).hgetall(k.generations).hgetall(k.changes).get(k.seq).get(k.epoch)
            pipe.hgetall(k.canaries)
            return pipe.execute()

        pins, gens, changes, seq, epoch, canaries = self._call("read cluster state", _read)
        snap = _snapshot(pins, gens, changes, seq, epoch, self.throttle)
        good: dict[str, Canary] = {}
        bad: dict[str, str] = {}
        for model_type, raw in canaries.items():
            try:
                good[validate_model_type(model_type)] = Canary.from_json(raw)
            except (InvalidName, WireError) as exc:
                bad[model_type[:200]] = f"canary unusable: {exc}"
                self.throttle.warning(f"canary:{model_type[:200]}", "ignoring canary %r: %s", model_type, exc)
        return replace(snap, canaries=good, bad_canaries=bad)

    def pins(self) -> dict[str, str]:
        return self.read().pins

    # -- popularity (warm start) -------------------------------------------
    def add_popularity(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return

        def _add() -> None:
            pipe = self.client.pipeline(transaction=False)
            for model_type, n in counts.items():
                pipe.zincrby(self.keys.popularity, n, model_type)
            pipe.execute()

        self._call("record popularity", _add)

    def popular(self, n: int) -> list[str]:
        names = self._call("read popularity", self.client.zrevrange, self.keys.popularity, 0, n - 1)
        out = []
        for name in names:
            try:
                out.append(validate_model_type(name))
            except InvalidName as exc:
                self.throttle.warning("popular", "ignoring popular model type: %s", exc)
        return out

    def describe(self) -> dict[str, Any]:
        snap = self.read()
        return {
            "nodes": self.nodes(),
            "pins": snap.pins,
            "canaries": {mt: c.to_dict() for mt, c in snap.canaries.items()},
            "generations": snap.generations,
            "seq": snap.seq,
            "epoch": snap.epoch,
        }

    def answer(self, change: Change, wait: bool, timeout_s: float) -> dict[str, Any]:
        """The answer to a change, as the admin API and the CLI print it (waits for acks if asked)."""
        doc: dict[str, Any] = {
            "scope": "cluster",
            "change": {
                "kind": change.kind.value,
                "model_type": change.model_type,
                "version": change.version or None,
                "seq": change.seq,
                "generation": change.generation,
                "epoch": change.epoch,
            },
        }
        if change.seq == 0:
            return doc | {"ok": True, "detail": nothing_changed(change), "acks": []}
        # None: the primary has no replica (nothing to confirm); False: it may not survive a failover.
        doc["replicated"] = change.replicated
        if change.replicated is False:
            doc["warning"] = (
                f"change #{change.seq} is applied on the Redis primary but no replica confirmed it within "
                f"{self.replica_timeout_s:g}s: if the primary fails now it may be lost; check the "
                "replicas (INFO replication) and repeat the call if it is missing"
            )
        if not wait:
            detail = "published; nodes apply it within milliseconds (wait=true to see acks)"
            return doc | {"ok": change.replicated is not False, "detail": detail}
        rows = self.wait_for_acks(change, timeout_s)
        doc["acks"] = [
            {
                "node_id": r.node_id,
                "outcome": r.outcome.value,
                "version": r.version,
                "detail": r.detail,
                "propagation_ms": r.propagation_ms,
            }
            for r in rows
        ]
        doc["ok"] = change.replicated is not False and all(r.outcome is Outcome.OK for r in rows)
        return doc


def nothing_changed(change: Change) -> str:
    """What a change with seq 0 (it changed nothing and was not published) tells a person."""
    if change.kind is ChangeKind.CANARY_ABORT:
        return f"no canary ran for {change.model_type}; nothing changed"
    return f"{change.model_type} was not pinned; nothing changed"


def parse_percent(value: object) -> float:
    """A canary's share of requests: a finite number from 0 to 100 (InvalidName otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidName("canary percent", str(value)[:40], "must be a number from 0 to 100")
    return float(value)


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"Redis at {kwargs.get('host')}:{kwargs.get('port')}"


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
