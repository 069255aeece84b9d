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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordinator.errors import ClusterUnavailable, InvalidName
from coordinator.keys import ALL, Keys
from coordinator.registry import Registry
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Ack, Change, ChangeKind, Heartbeat, Outcome, WireError

__all__ = ["AckRow", "Change", "ClusterState", "LogThrottle", "Snapshot", "connect"]

log = logging.getLogger("modelcache.state")

# KEYS: pins, generations, changes, seq, epoch.
# ARGV: kind, model_type, version, origin, ts, channel, a fresh epoch token.
# The epoch is created here, with the counters, when absent: after Redis lost its data
# the first change starts a new epoch, so (epoch, seq) never names two changes.
_CHANGE = """
local kind, mt, version = ARGV[1], ARGV[2], ARGV[3]
if kind == 'pin' then
  redis.call('HSET', KEYS[1], mt, version)
elseif kind == 'unpin' then
  if redis.call('HDEL', KEYS[1], mt) == 0 then return '' end
end
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[5], epoch)
end
local gen = redis.call('HINCRBY', KEYS[2], mt, 1)
local seq = redis.call('INCR', KEYS[4])
local change = cjson.encode({kind=kind, model_type=mt, version=version, generation=gen, seq=seq,
                             origin=ARGV[4], ts=tonumber(ARGV[5]), epoch=epoch})
redis.call('HSET', KEYS[3], mt, change)
redis.call('PUBLISH', ARGV[6], change)
return change
"""


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


@dataclass
class AckRow:
    node_id: str
    outcome: Outcome
    version: str | None = None
    detail: str = ""
    propagation_ms: float | None = None
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def connect(url: str, *, timeout: float = 2.0, decode_responses: bool = True) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (callers must never hang on Redis).

    `decode_responses=False` for the events channel: anyone can PUBLISH any bytes there, and
    decoding inside redis-py raises where the subscriber cannot tell junk from a broken link.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=min(timeout, 1.0),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
        # Any key may hold non-UTF-8 bytes (a hand-edited value): decode them as U+FFFD, which
        # then fails validation like any other junk, instead of raising inside redis-py.
        encoding_errors="replace",
    )


class ClusterState:
    """Reads and changes the cluster's state in one Redis (sync API, short timeouts)."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, origin: str = "cli") -> None:
        self.client = client
        self.keys = keys or Keys()
        self.origin = origin
        self._change = client.register_script(_CHANGE)
        self.throttle = LogThrottle()

    @classmethod
    def from_url(cls, url: str, prefix: str = Keys.prefix, origin: str = "cli") -> ClusterState:
        return cls(connect(url), Keys(prefix), origin)

    def close(self) -> None:
        self.client.close()

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            where = self.client.connection_pool.connection_kwargs
            raise ClusterUnavailable(
                f"cannot {what}: Redis at {where.get('host')}:{where.get('port')} is unreachable "
                f"({type(exc).__name__}: {exc}); check MODELCACHE_REDIS_URL and that Redis runs"
            ) from exc

    # -- changes -----------------------------------------------------------
    def _publish(self, kind: ChangeKind, model_type: str, version: str = "") -> Change:
        ts = time.time()
        k = self.keys
        raw = self._call(
            f"publish a {kind.value}",
            self._change,
            [k.pins, k.generations, k.changes, k.seq, k.epoch],
            [kind.value, model_type, version, self.origin, repr(ts), k.events, secrets.token_hex(8)],
        )
        if not raw:  # nothing changed, nothing published
            return Change(kind, model_type, version, 0, 0, ts, origin=self.origin)
        # Parse what the script wrote, so the caller holds exactly the change nodes will see.
        return Change.from_json(raw)

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

    # -- reading -----------------------------------------------------------
    def read(self) -> Snapshot:
        """The desired state; values that fail validation are set aside and logged, never raised."""

        def _read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            k = self.keys
            pipe.hgetall(k.pins).hgetall(k.generations).hgetall(k.changes).get(k.seq).get(k.epoch)
            return pipe.execute()

        pins, gens, changes, seq, epoch = self._call("read cluster state", _read)
        return _snapshot(pins, gens, changes, seq, epoch, self.throttle)

    def pins(self) -> dict[str, str]:
        return self.read().pins

    # -- membership and acknowledgements -----------------------------------
    def heartbeat(self, beat: Heartbeat, ttl_s: float) -> None:
        key = self.keys.node(beat.node_id)
        self._call("heartbeat", self.client.set, key, beat.to_json(), None, max(1, int(ttl_s * 1000)))

    def leave(self, node_id: str) -> None:
        self._call("leave the cluster", self.client.delete, self.keys.node(node_id))

    def heartbeats(self) -> list[Heartbeat]:
        """Live nodes (heartbeat not expired), sorted by id; unreadable heartbeats are skipped."""

        def _values() -> list[tuple[str, Any]]:
            names = sorted(self.client.scan_iter(match=self.keys.node_pattern, count=100))
            return list(zip(names, self.client.mget(names), strict=True)) if names else []

        beats: dict[str, Heartbeat] = {}
        for name, value in self._call("list nodes", _values):
            if value is None:
                continue  # expired between SCAN and MGET
            try:
                beat = Heartbeat.from_json(value)
            except WireError as exc:
                self.throttle.warning(f"node:{name}", "ignoring heartbeat %s: %s", name[:200], exc)
                continue
            beats[beat.node_id] = beat
        return [beats[n] for n in sorted(beats)]

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes as JSON-ready dicts (the shape `status` and /api/v1/cluster show)."""
        return [b.to_dict() for b in self.heartbeats()]

    def write_ack(self, ack: Ack) -> None:
        self._call("acknowledge", self.client.set, self.keys.ack(ack.node_id), ack.to_json(), 86400)

    def acks(self, node_ids: Iterable[str]) -> dict[str, Ack]:
        """The last acknowledgement of each node that has a readable one."""
        ids = list(node_ids)
        if not ids:
            return {}
        values = self._call("read acknowledgements", self.client.mget, [self.keys.ack(i) for i in ids])
        out: dict[str, Ack] = {}
        for node_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            try:
                out[node_id] = Ack.from_json(value)
            except WireError as exc:
                self.throttle.warning(f"ack:{node_id}", "ignoring acknowledgement of %s: %s", node_id, exc)
        return out

    def wait_for_acks(self, change: Change, timeout_s: float, poll_s: float = 0.02) -> list[AckRow]:
        """Wait until every live node has applied `change` (or the timeout passes).

        Only acknowledgements of this change's epoch count: after Redis lost its data a
        node's old ack may carry a seq as high as this change's, yet answer another change.
        """
        nodes = {b.node_id: b for b in self.heartbeats()}
        deadline = time.monotonic() + timeout_s
        rows: dict[str, AckRow] = {}
        while True:
            for node_id, ack in self.acks(set(nodes) - set(rows)).items():
                if ack.answers(change):
                    rows[node_id] = _row(node_id, ack, change, nodes[node_id].url)
            if len(rows) == len(nodes) or time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        for node_id in set(nodes) - set(rows):
            rows[node_id] = AckRow(
                node_id,
                Outcome.TIMEOUT,
                detail=f"no acknowledgement of change #{change.seq} within {timeout_s:g}s",
                url=nodes[node_id].url,
            )
        return [rows[n] for n in sorted(rows)]

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
            "generations": snap.generations,
            "seq": snap.seq,
            "epoch": snap.epoch,
        }


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


def _row(node_id: str, ack: Ack, change: Change, url: str) -> AckRow:
    outcome = ack.outcomes.get(change.model_type)
    if outcome is None or outcome.epoch != change.epoch or outcome.seq < change.seq:
        # The node applied a later state in which this model needed no work.
        served = ack.serving.get(change.model_type)
        return AckRow(node_id, Outcome.OK, served, "nothing to do on this node", None, url)
    detail = outcome.detail
    if outcome.seq > change.seq:
        # Two operators at once: a later change on this model type won; say so, not just "ok".
        later = f"superseded by change #{outcome.seq}"
        detail = f"{later}; {detail}" if detail else later
    return AckRow(node_id, outcome.outcome, outcome.version, detail, outcome.propagation_ms, url)
