"""The load balancer's agent: keeps its HAProxy's placement map equal to the one in Redis.

One agent runs beside each HAProxy (`modelcache lb-agent`, a thread of `modelcache up`, a
sidecar in Compose and Kubernetes). Every `interval_s` it:

1. reads its HAProxy's per-model request rates (the frontend's stick table) and reports them
   in Redis, so the placement sees the traffic of every load balancer replica;
2. if it holds the leader lock (one agent at a time, a key with a TTL), computes the
   placement (coordinator.placement) from the live nodes, the models' popularity, sizes and
   summed rates, and publishes it when it changed, with the next generation;
3. writes the published placement into its HAProxy's map (replaced whole, atomically)
   whenever the entries it makes of it (placement and node -> server mapping) or the map's
   size (a restarted HAProxy starts empty) differ from what it last wrote.

Failure is never an outage: HAProxy routes a model with no map entry on the hash ring, as
before placement existed, and a map entry's backend fails over to other nodes when its node
is down. With Redis or the agent gone the last map stays (node health is HAProxy's own
checks); an HAProxy that restarts meanwhile starts empty, i.e. on the ring.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from coordinator.errors import InvalidName, ModelCacheError
from coordinator.haproxy_api import RuntimeAPI, RuntimeAPIError
from coordinator.lb import PLACEMENT_MAP, placed_backend
from coordinator.link import Link, LogThrottle
from coordinator.membership import Membership
from coordinator.placement import SLOTS, Assignment, ModelInfo, NodeInfo, assign
from coordinator.versions import validate_model_type
from coordinator.wire import Heartbeat

__all__ = ["PlacementAgent"]

log = logging.getLogger("modelcache.lbagent")

TABLE = "modelcache"
"""The frontend's stick table (per model request rate over 10 s, and `__all__`)."""
MAX_MODELS = 2000
"""Models placed at most (the most popular): the rest stay on the hash ring."""
RESPLIT = 2
"""A holder's share must move by 2 slots (of 16) or more to publish a new placement: rates wobble."""

# Take the lock when free, renew it when ours: one round trip, no race between GET and SET.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Publish only while still the leader: a round that stalled past the lock's TTL (slow Redis, a
# paused process) must not overwrite the newer placement of the agent that took over.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


@dataclass
class Applied:
    """What the agent last wrote into its HAProxy's map (compared by content: a Redis that lost
    its data starts generations again at 1)."""

    generation: int = -1
    entries: tuple[tuple[str, str], ...] = ()


class PlacementAgent:
    def __init__(
        self,
        link: Link,
        api: RuntimeAPI,
        agent_id: str,
        *,
        interval_s: float = 1.0,
        rate_ttl_s: float = 30.0,
        map_name: str = PLACEMENT_MAP,
        clock: Callable[[], float] = time.time,
        health_file: Path | None = None,
    ) -> None:
        """`health_file`: touched after every round, failed or not (a liveness probe reads its age)."""
        self.link, self.api, self.agent_id = link, api, agent_id
        self.health_file = health_file
        self.members = Membership(link)
        self.interval_s, self.rate_ttl_s, self.map_name, self.clock = interval_s, rate_ttl_s, map_name, clock
        self._lead = link.script(_LEAD)
        self._publish_if_leader = link.script(_PUBLISH)
        self.applied = Applied()
        self.leader = False
        self.throttle = LogThrottle()

    # -- one round -------------------------------------------------------------
    def tick(self) -> None:
        """Report, lead (maybe), apply. Raises ModelCacheError (Redis) or RuntimeAPIError (HAProxy)."""
        rates = self._own_rates()
        k = self.link.keys
        if rates is not None:
            report = json.dumps({"ts": self.clock(), "rates": rates})
            self.link.call(
                "report request rates", self.link.client.hset, k.placement_rates, self.agent_id, report
            )
        beats = self.members.heartbeats()
        ttl_ms = max(1000, int(3 * self.interval_s * 1000))
        self.leader = bool(
            self.link.call("lead placement", self._lead, [k.placement_leader], [self.agent_id, ttl_ms])
        )
        current = self._published()
        if self.leader:
            current = self._publish(beats, current)
        if current is not None:
            self._apply(current, beats)

    def _own_rates(self) -> dict[str, int] | None:
        try:
            rates = self.api.rates(TABLE)
        except RuntimeAPIError as exc:
            self.throttle.warning("rates", "cannot read HAProxy's request rates: %s", exc, logger=log)
            return None
        rates.pop("__all__", None)
        # The table's keys are whatever model names clients put in their paths (100k of them at
        # most): report only names a model can have, the MAX_MODELS busiest, or every agent
        # writes, and the leader parses, megabytes a round.
        valid = [(n, r) for n, r in rates.items() if _model_name(n)]
        return dict(sorted(valid, key=lambda item: -item[1])[:MAX_MODELS])

    def _published(self) -> Assignment | None:
        raw = self.link.call("read the placement", self.link.client.get, self.link.keys.placement)
        if raw is None:
            return None
        try:
            return Assignment.from_json(raw)
        except ValueError as exc:  # from_json turns every junk shape into ValueError
            self.throttle.warning("junk", "ignoring the placement in Redis: %s", exc, logger=log)
            return None

    # -- leader ----------------------------------------------------------------
    def _publish(self, beats: list[Heartbeat], current: Assignment | None) -> Assignment | None:
        nodes = [
            NodeInfo(
                b.node_id, _int(b.stats.get("cache_size"), 3) or 3, _int(b.stats.get("cache_max_bytes"), None)
            )
            for b in beats
        ]
        models = self._models(beats)
        placed = assign(nodes, models, current)
        if current is not None and not _differs(current, placed):
            return current
        generation = (current.generation if current is not None else 0) + 1
        new = Assignment(placed, generation, SLOTS)
        k = self.link.keys
        keys, args = [k.placement_leader, k.placement], [self.agent_id, new.to_json()]
        if not self.link.call("publish the placement", self._publish_if_leader, keys, args):
            self.leader = False
            log.warning("lost the placement lock during the round: generation %d not published", generation)
            return self._published()
        log.info("placement generation %d: %d models on %d nodes", generation, len(placed), len(nodes))
        return new

    def _models(self, beats: list[Heartbeat]) -> list[ModelInfo]:
        """Models to place: the most popular ones and what nodes cache, with sizes and rates."""
        k, client = self.link.keys, self.link.client
        popular = self.link.call("read popularity", client.zrevrange, k.popularity, 0, MAX_MODELS - 1)
        reports = self.link.call("read request rates", client.hgetall, k.placement_rates)
        rates: dict[str, float] = {}
        now = self.clock()
        for agent, raw in reports.items():
            try:
                report = json.loads(raw)
                if now - float(report["ts"]) > self.rate_ttl_s:
                    continue
                for name, rate in dict(report["rates"]).items():
                    rates[str(name)] = rates.get(str(name), 0.0) + _rate(rate)
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                self.throttle.warning(
                    f"rates:{agent}", "ignoring rates reported by %s: %s", agent, exc, logger=log
                )
        # Sizes outlive the cache entries that reported them: a model evicted everywhere still
        # weighs what it weighed.
        seen = {name: size for b in beats for name, size in b.sizes.items()}
        if seen:
            self.link.call("record model sizes", lambda: client.hset(k.placement_sizes, mapping=seen))
        stored = self.link.call("read model sizes", client.hgetall, k.placement_sizes)
        sizes = {name: n for name, v in stored.items() if (n := _size(v)) is not None}
        names = list(dict.fromkeys([*popular, *(c["model_type"] for b in beats for c in b.cached)]))
        out = []
        for name in names[:MAX_MODELS]:
            try:
                validate_model_type(name)
            except InvalidName:
                continue
            out.append(ModelInfo(name, sizes.get(name, 0), rates.get(name, 0.0)))
        return out

    # -- every agent -----------------------------------------------------------
    def _apply(self, placement: Assignment, beats: list[Heartbeat]) -> None:
        servers = self.api.servers("nodes")
        backends: dict[str, str] = {}
        for b in beats:
            url = urlsplit(b.url)
            if url.hostname and url.port:
                k = next((i for i, s in enumerate(servers, 1) if s.is_at(url.hostname, url.port)), None)
                if k is not None:
                    backends[b.node_id] = placed_backend(k)
        entries = []
        for model in placement.models:
            table = placement.slot_table(model)
            if all(n in backends for n in table):  # else: the hash ring, until the node is known
                entries += [(f"{model}/{i}", backends[n]) for i, n in enumerate(table)]
        if tuple(entries) == self.applied.entries:
            if self.api.map_size(self.map_name) == len(entries):
                self.applied.generation = placement.generation
                return
            log.warning("HAProxy's placement map lost its entries (restarted?): writing them again")
        self.api.replace_map(self.map_name, entries)
        self.applied = Applied(placement.generation, tuple(entries))

    # -- the loop --------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick every interval until `stop` is set; a failing round is logged (rate-limited) and retried."""
        while not stop.is_set():
            try:
                self.tick()
            except (ModelCacheError, RuntimeAPIError) as exc:
                self.throttle.warning(type(exc).__name__, "placement agent: %s", exc, logger=log)
            except Exception:  # a background thread never dies silently
                if self.throttle.allow("crash"):
                    log.exception("placement agent round failed")
            if self.health_file is not None:
                self.health_file.touch()
            stop.wait(self.interval_s)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="lb-agent", daemon=True)
        thread.start()
        return thread, stop


def _int(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


MAX_RATE = 1e9
"""Requests per 10 s a report may claim for one model: a finite bound keeps the sums finite."""
MAX_SIZE = 1 << 50
"""Bytes a model may weigh (1 PiB): beyond, the float arithmetic of the placement overflows."""


def _model_name(name: str) -> bool:
    try:
        validate_model_type(name)
    except InvalidName:
        return False
    return True


def _rate(value: object) -> float:
    """A reported rate clamped to 0..MAX_RATE (NaN: 0); ValueError/TypeError when not a number."""
    rate = float(value)  # type: ignore[arg-type]
    return min(MAX_RATE, rate) if rate > 0 else 0.0


def _size(value: object) -> int | None:
    """A stored size, or None for junk: ASCII digits only ('²'.isdigit() is true), at most MAX_SIZE."""
    text = str(value)
    if not 0 < len(text) <= 16 or not text.isascii() or not text.isdigit():
        return None
    return min(int(text), MAX_SIZE)


def _differs(old: Assignment, new: dict[str, tuple[tuple[str, int], ...]]) -> bool:
    """A different holder set for some model, or a share moved by RESPLIT slots or more."""
    if old.models.keys() != new.keys():
        return True
    for model, holders in new.items():
        before = dict(old.models[model])
        after = dict(holders)
        if before.keys() != after.keys() or any(abs(before[n] - after[n]) >= RESPLIT for n in after):
            return True
    return False
