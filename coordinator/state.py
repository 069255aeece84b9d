"""Cluster-wide truth in Redis: pins, reload generations, membership, acknowledgements.

Desired state lives in keys; every change bumps a generation and the global
sequence and publishes an event in one Lua script, so keys and event can never
disagree. Events only wake nodes: a node that missed one converges by re-reading
the keys (invariant 3).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from coordinator.errors import CanaryNotFound, ClusterStateCorrupt, ClusterUnavailable, InvalidName
from coordinator.keys import ALL, Keys
from coordinator.redis_url import client_for, parse_redis_url
from coordinator.registry import Registry
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Ack, Canary, Change, ChangeKind, Heartbeat, Outcome, WireError

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

# KEYS: pins, generations, changes, seq, epoch, canaries.
# ARGV: kind, model_type, version, origin, ts, channel, a fresh epoch token, canary JSON.
# `promote` takes its version from the canary and, in the same step, pins it and ends the
# canary: no node can see the pin without the canary's end or the reverse.
# The epoch is created here, with the counters, when absent: after Redis lost its data
# the first change starts a new epoch, so (epoch, seq) never names two changes.
# Returns {change JSON or '' when nothing changed, connected replicas}: the caller WAITs for
# a replica only when there is one (WAIT 1 with none blocks for its whole timeout).
_CHANGE = """
local kind, mt, version = ARGV[1], ARGV[2], ARGV[3]
local info = redis.call('INFO', 'replication')
local replicas = tonumber(string.match(info, 'connected_slaves:(%d+)')) or 0
if kind == 'pin' then
  redis.call('HSET', KEYS[1], mt, version)
elseif kind == 'unpin' then
  if redis.call('HDEL', KEYS[1], mt) == 0 then return {'', replicas} end
elseif kind == 'canary' then
  redis.call('HSET', KEYS[6], mt, ARGV[8])
elseif kind == 'canary_abort' then
  if redis.call('HDEL', KEYS[6], mt) == 0 then return {'', replicas} end
elseif kind == 'promote' then
  local raw = redis.call('HGET', KEYS[6], mt)
  if not raw then return {'', replicas, 'absent'} end
  local ok, canary = pcall(cjson.decode, raw)
  if not ok or type(canary) ~= 'table' or type(canary.version) ~= 'string' or canary.version == '' then
    return {'', replicas, 'unreadable'}
  end
  version = canary.version
  redis.call('HSET', KEYS[1], mt, version)
  redis.call('HDEL', KEYS[6], mt)
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
return {change, replicas}
"""

# Membership on the Redis clock (nodes' clocks may disagree). KEYS: members, heartbeats.
# ARGV: node_id, heartbeat JSON, ttl ms. Expired members are swept on every beat, so the
# hash holds live nodes plus at most one heartbeat interval of dead ones.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""

# KEYS: members, heartbeats. Returns {ids, heartbeats} of live nodes (HMGET in chunks:
# Lua's unpack has a stack limit).
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local values = {}
for i = 1, #ids, 500 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
  for _, v in ipairs(chunk) do values[#values + 1] = v end
end
return {ids, values}
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
    canaries: dict[str, Canary] = field(default_factory=dict)
    bad_canaries: dict[str, str] = field(default_factory=dict)
    """model_type (as stored) -> why its canary cannot be applied."""


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

    `url` is `redis://...` or `redis+sentinel://h:p[,h:p...]/<master>/<db>`; with Sentinel
    every (re)connection asks for the current primary, so the client follows failovers.
    `decode_responses=False` for the events channel: anyone can PUBLISH any bytes there, and
    decoding inside redis-py raises where the subscriber cannot tell junk from a broken link.
    """
    return client_for(parse_redis_url(url), timeout=timeout, decode_responses=decode_responses)


class ClusterState:
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
        self._change = client.register_script(_CHANGE)
        self._beat = client.register_script(_BEAT)
        self._live = client.register_script(_LIVE)
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

    # -- membership and acknowledgements -----------------------------------
    def heartbeat(self, beat: Heartbeat, ttl_s: float) -> None:
        k = self.keys
        ttl_ms = max(1, int(ttl_s * 1000))
        self._call("heartbeat", self._beat, [k.members, k.heartbeats], [beat.node_id, beat.to_json(), ttl_ms])

    def leave(self, node_id: str) -> None:
        def _leave() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.keys.members, node_id).hdel(self.keys.heartbeats, node_id).execute()

        self._call("leave the cluster", _leave)

    def heartbeats(self) -> list[Heartbeat]:
        """Live nodes (heartbeat not expired), sorted by id; unreadable heartbeats are skipped.

        One round trip, O(live nodes): no SCAN over the database's keys.
        """

        def _values() -> list[tuple[str, Any]]:
            ids, values = self._live([self.keys.members, self.keys.heartbeats], [])
            return list(zip(ids, values, strict=True))

        beats: dict[str, Heartbeat] = {}
        for name, value in self._call("list nodes", _values):
            if value is None:
                continue  # swept between the member and its heartbeat
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
        """Store the ack (the truth) and publish it (wakes `wait_for_acks` at once), one round trip."""

        def _write() -> None:
            raw = ack.to_json()
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.ack(ack.node_id), raw, ex=86400).publish(self.keys.acks_channel, raw)
            pipe.execute()

        self._call("acknowledge", _write)

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

    def wait_for_acks(self, change: Change, timeout_s: float, poll_s: float = 0.25) -> list[AckRow]:
        """Wait until every live node has applied `change` (or the timeout passes).

        Woken by each ack published on the acks channel (subscribed before the first read, so
        none is missed between the two); the keys are re-read every `poll_s` without a message,
        because pub/sub is at-most-once. Only acknowledgements of this change's epoch count:
        after Redis lost its data a node's old ack may carry a seq as high as this change's.
        """
        nodes = {b.node_id: b for b in self.heartbeats()}
        deadline = time.monotonic() + timeout_s
        rows: dict[str, AckRow] = {}

        def take(node_id: str, ack: Ack) -> None:
            if node_id in nodes and node_id not in rows and ack.answers(change):
                rows[node_id] = _row(node_id, ack, change, nodes[node_id].url)

        pubsub = self._call("subscribe to acknowledgements", self._ack_subscription) if nodes else None
        try:
            next_read = 0.0  # read the keys first: acks written before we subscribed
            while True:
                now = time.monotonic()
                if now >= next_read or now >= deadline:
                    for node_id, ack in self.acks(set(nodes) - set(rows)).items():
                        take(node_id, ack)
                    next_read = time.monotonic() + poll_s
                if len(rows) == len(nodes) or now >= deadline or pubsub is None:
                    break
                wait = max(0.0, min(next_read, deadline) - time.monotonic())
                message = self._call("wait for acknowledgements", pubsub.get_message, True, wait)
                while message is not None:
                    self._take_published(message, take)
                    message = self._call("wait for acknowledgements", pubsub.get_message, True, 0)
        finally:
            if pubsub is not None:
                with _suppress_redis():
                    pubsub.close()
        for node_id in set(nodes) - set(rows):
            rows[node_id] = AckRow(
                node_id,
                Outcome.TIMEOUT,
                detail=f"no acknowledgement of change #{change.seq} within {timeout_s:g}s",
                url=nodes[node_id].url,
            )
        return [rows[n] for n in sorted(rows)]

    def _ack_subscription(self) -> Any:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.acks_channel)
        except BaseException:
            with _suppress_redis():
                pubsub.close()
            raise
        return pubsub

    def _take_published(self, message: Any, take: Any) -> None:
        if not isinstance(message, dict) or message.get("type") != "message":
            return
        try:
            ack = Ack.from_json(message.get("data"))
        except WireError as exc:  # anyone can PUBLISH: junk here wakes nobody
            self.throttle.warning("ack-message", "ignoring a message on %s: %s", self.keys.acks_channel, exc)
            return
        take(ack.node_id, ack)

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


def _suppress_redis() -> contextlib.suppress:
    return contextlib.suppress(redis.RedisError, OSError)


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
