"""Cluster-wide truth in Redis: pins, reload generations, membership, acknowledgements.

Desired state lives in keys; every change bumps a generation and the global
sequence and publishes an event in one Lua script, so keys and event can never
disagree. Events only wake nodes: a node that missed one converges by re-reading
the keys (invariant 3).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordinator.errors import ClusterUnavailable
from coordinator.keys import ALL, Keys
from coordinator.registry import Registry
from coordinator.versions import normalize_version, validate_model_type

# KEYS: pins, generations, changes, seq.  ARGV: kind, model_type, version, origin, ts, channel.
_CHANGE = """
local kind, mt, version = ARGV[1], ARGV[2], ARGV[3]
if kind == 'pin' then
  redis.call('HSET', KEYS[1], mt, version)
elseif kind == 'unpin' then
  if redis.call('HDEL', KEYS[1], mt) == 0 then return {0, 0} end
end
local gen = redis.call('HINCRBY', KEYS[2], mt, 1)
local seq = redis.call('INCR', KEYS[4])
local change = cjson.encode({kind=kind, model_type=mt, version=version, generation=gen, seq=seq,
                             origin=ARGV[4], ts=tonumber(ARGV[5])})
redis.call('HSET', KEYS[3], mt, change)
redis.call('PUBLISH', ARGV[6], change)
return {seq, gen}
"""


@dataclass(frozen=True)
class Change:
    """One published change; `seq` is 0 when nothing changed (unpinning an unpinned model)."""

    kind: str
    model_type: str
    version: str
    seq: int
    generation: int
    ts: float


@dataclass(frozen=True)
class Snapshot:
    """The desired state, read in one transaction."""

    pins: dict[str, str]
    generations: dict[str, int]
    changes: dict[str, dict[str, Any]]
    seq: int


@dataclass
class AckRow:
    node_id: str
    outcome: str  # ok | failed | timeout
    version: str | None = None
    detail: str = ""
    propagation_ms: float | None = None
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def connect(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: no retries, short timeouts (callers must never hang on Redis)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=min(timeout, 1.0),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class ClusterState:
    """Reads and changes the cluster's state in one Redis (sync API, short timeouts)."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None, origin: str = "cli") -> None:
        self.client = client
        self.keys = keys or Keys()
        self.origin = origin
        self._change = client.register_script(_CHANGE)

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
    def _publish(self, kind: str, model_type: str, version: str = "") -> Change:
        ts = time.time()
        k = self.keys
        seq, gen = self._call(
            f"publish a {kind}",
            self._change,
            [k.pins, k.generations, k.changes, k.seq],
            [kind, model_type, version, self.origin, repr(ts), k.events],
        )
        return Change(kind, model_type, version, int(seq), int(gen), ts)

    def pin(self, model_type: str, version: str, registry: Registry) -> Change:
        """Pin `model_type` to `version` everywhere; refused unless the registry has it."""
        version = registry.metadata(model_type, version).version  # raises before publishing
        return self._publish("pin", model_type, version)

    def unpin(self, model_type: str) -> Change:
        return self._publish("unpin", validate_model_type(model_type))

    def reload(self, model_type: str | None, version: str | None, registry: Registry) -> Change:
        """Ask every node to reload one model type (or one exact version), or everything."""
        if model_type is None:
            return self._publish("reload", ALL)
        if version is not None:
            version = registry.metadata(model_type, normalize_version(version)).version
        else:
            registry.versions(model_type)
        return self._publish("reload", model_type, version or "")

    # -- reading -----------------------------------------------------------
    def read(self) -> Snapshot:
        def _read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            k = self.keys
            pipe.hgetall(k.pins).hgetall(k.generations).hgetall(k.changes).get(k.seq)
            return pipe.execute()

        pins, gens, changes, seq = self._call("read cluster state", _read)
        return Snapshot(
            pins=dict(pins),
            generations={f: int(g) for f, g in gens.items()},
            changes={f: json.loads(c) for f, c in changes.items()},
            seq=int(seq or 0),
        )

    def pins(self) -> dict[str, str]:
        return dict(self._call("read pins", self.client.hgetall, self.keys.pins))

    # -- membership and acknowledgements -----------------------------------
    def heartbeat(self, node_id: str, info: Mapping[str, Any], ttl_s: float) -> None:
        self._call(
            "heartbeat",
            self.client.set,
            self.keys.node(node_id),
            json.dumps(info),
            None,
            max(1, int(ttl_s * 1000)),
        )

    def leave(self, node_id: str) -> None:
        self._call("leave the cluster", self.client.delete, self.keys.node(node_id))

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes (heartbeat not expired), sorted by id."""

        def _nodes() -> list[dict[str, Any]]:
            names = sorted(self.client.scan_iter(match=self.keys.node_pattern, count=100))
            values = self.client.mget(names) if names else []
            return [json.loads(v) for v in values if v]

        return sorted(self._call("list nodes", _nodes), key=lambda n: n["node_id"])

    def write_ack(self, node_id: str, ack: Mapping[str, Any]) -> None:
        self._call("acknowledge", self.client.set, self.keys.ack(node_id), json.dumps(ack), 86400)

    def acks(self, node_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(node_ids)
        if not ids:
            return {}
        values = self._call("read acknowledgements", self.client.mget, [self.keys.ack(i) for i in ids])
        return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v}

    def wait_for_acks(self, change: Change, timeout_s: float, poll_s: float = 0.02) -> list[AckRow]:
        """Wait until every live node has applied `change` (or the timeout passes)."""
        nodes = {n["node_id"]: n for n in self.nodes()}
        deadline = time.monotonic() + timeout_s
        rows: dict[str, AckRow] = {}
        while True:
            for node_id, ack in self.acks(set(nodes) - set(rows)).items():
                if ack.get("seq", 0) >= change.seq:
                    rows[node_id] = _row(node_id, ack, change, nodes[node_id].get("url", ""))
            if len(rows) == len(nodes) or time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        for node_id in set(nodes) - set(rows):
            rows[node_id] = AckRow(
                node_id,
                "timeout",
                detail=f"no acknowledgement within {timeout_s:g}s",
                url=nodes[node_id].get("url", ""),
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
        return list(self._call("read popularity", self.client.zrevrange, self.keys.popularity, 0, n - 1))

    def describe(self) -> dict[str, Any]:
        snap = self.read()
        return {
            "nodes": self.nodes(),
            "pins": snap.pins,
            "generations": snap.generations,
            "seq": snap.seq,
        }


def _row(node_id: str, ack: Mapping[str, Any], change: Change, url: str) -> AckRow:
    outcome = ack.get("outcomes", {}).get(change.model_type)
    if outcome is None or outcome.get("seq", 0) < change.seq:
        # The node applied a later state in which this model needed no work.
        served = ack.get("serving", {}).get(change.model_type)
        return AckRow(node_id, "ok", served, "nothing to do on this node", None, url)
    return AckRow(
        node_id,
        outcome["outcome"],
        outcome.get("version"),
        outcome.get("detail", ""),
        outcome.get("propagation_ms"),
        url,
    )
