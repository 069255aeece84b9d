"""Apply cluster state from Redis on this node: subscriber, reconcile loop, heartbeat.

Two background threads, neither on the request path (invariant 4):
* the subscriber listens on the events channel and only wakes the loop;
* the loop reconciles (reads pins and generations, applies what differs, acks)
  when woken, on every (re)connect and every RECONCILE_INTERVAL_S, and
  heartbeats every HEARTBEAT_S. A node that missed every event still converges
  (invariant 3). Redis errors mark the node disconnected and back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from typing import Any

import redis

from coordinator.errors import ClusterUnavailable
from coordinator.keys import ALL, Keys
from coordinator.state import AckRow, Change, ClusterState, Snapshot, connect
from node.metrics import NodeMetrics
from node.service import ModelService, Outcome
from node.settings import NodeSettings

log = logging.getLogger("modelcache.sync")

MAX_BACKOFF_S = 5.0


class ClusterSync:
    """Keeps one node in step with the cluster, and carries the node's cluster-wide admin calls."""

    def __init__(self, settings: NodeSettings, service: ModelService, metrics: NodeMetrics) -> None:
        assert settings.redis_url, "ClusterSync needs MODELCACHE_REDIS_URL"
        self.settings, self.service, self.metrics = settings, service, metrics
        self.node_id = settings.resolved_node_id
        self.keys = Keys(settings.redis_prefix)
        self.state = ClusterState(connect(settings.redis_url), self.keys, origin=self.node_id)
        self.started_at = time.time()
        self._applied: dict[str, int] | None = None  # generations applied; None until first sync
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reported: Counter[str] = Counter()
        self._connected = False
        metrics.redis_connected.set(0)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        for target in (self._subscribe_forever, self._loop_forever):
            thread = threading.Thread(target=target, name=f"modelcache-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await asyncio.to_thread(self._join_and_leave)

    def _join_and_leave(self) -> None:
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(ClusterUnavailable):
            self.state.leave(self.node_id)  # drop out of the cluster view at once
        self.state.close()

    def warm(self) -> list[str]:
        """Warm start (invariant 7): adopt pins, then preload pinned and popular models."""
        try:
            self._reconcile()
        except ClusterUnavailable as exc:
            log.warning("warm-up without cluster state: %s", exc)
            return self.service.warm(self.settings.warmup)
        wanted = list(self.settings.warmup) + sorted(self.service.pins)
        if self.settings.warmup_popular:
            with contextlib.suppress(ClusterUnavailable):
                wanted += self.state.popular(self.service.cache.capacity)
        unique = list(dict.fromkeys(wanted))
        return self.service.warm(unique)

    # -- threads -------------------------------------------------------------
    def _subscribe_forever(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = connect(self.settings.redis_url, timeout=5).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.keys.events)
                backoff = 0.1
                self._wake.set()  # (re)connected: reconcile, we may have missed events
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._wake.set()
            except (redis.RedisError, OSError) as exc:
                self._set_connected(False, f"subscriber: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

    def _loop_forever(self) -> None:
        interval = self.settings.reconcile_interval_s
        next_reconcile = time.monotonic()
        next_heartbeat = time.monotonic()
        backoff = 0.1
        while not self._stop.is_set():
            now = time.monotonic()
            woken = self._wake.wait(max(0.0, min(next_reconcile, next_heartbeat) - now))
            if self._stop.is_set():
                return
            self._wake.clear()
            now = time.monotonic()
            try:
                rejoining = not self._connected
                if woken or now >= next_reconcile:
                    self._reconcile()
                    next_reconcile = time.monotonic() + interval
                # Back from an outage: heartbeat at once, our membership key has likely expired.
                if now >= next_heartbeat or (rejoining and self._connected):
                    self._heartbeat()
                    next_heartbeat = time.monotonic() + self.settings.heartbeat_s
                backoff = 0.1
            except ClusterUnavailable as exc:
                self._set_connected(False, str(exc))
                # Retry soon, then less often while Redis stays away.
                next_reconcile = next_heartbeat = time.monotonic() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:
                log.exception("reconcile failed")
                next_reconcile = time.monotonic() + interval

    def _set_connected(self, connected: bool, why: str = "") -> None:
        if connected != self._connected:
            if connected:
                log.info("connected to Redis")
            else:
                log.warning("lost Redis, serving from the local cache and registry: %s", why)
        self._connected = connected
        self.metrics.redis_connected.set(1 if connected else 0)

    # -- reconcile -------------------------------------------------------------
    def _reconcile(self) -> None:
        snap = self.state.read()
        self._set_connected(True)
        if self._applied is None:
            # First contact: adopt the state as it is; nothing is cached yet, so nothing reloads.
            self.service.set_pins(snap.pins, source="startup")
            self._applied = dict(snap.generations)
            self._write_ack(snap)
            return
        applied_at = time.time()
        outcomes: dict[str, Outcome] = {}
        if snap.pins != self.service.pins:
            for outcome in self.service.set_pins(snap.pins, source="cluster"):
                outcomes[outcome.model_type] = outcome
        for field, generation in sorted(snap.generations.items()):
            # != rather than >: a Redis that lost its data restarts the counters.
            if self._applied.get(field) == generation:
                continue
            change = snap.changes.get(field, {})
            if field == ALL:
                outcomes[ALL] = _combine(self.service.reload(source="cluster"))
            elif field not in outcomes and change.get("kind") == "reload":
                version = change.get("version") or None
                [outcomes[field]] = self.service.reload(field, version, source="cluster")
            elif field not in outcomes:  # a pin/unpin this node had already adopted
                served = self.service.served_version(field)
                outcomes[field] = Outcome(field, "ok", served, served, "already applied")
            self._applied[field] = generation
            self._record(field, outcomes[field], change, applied_at)
        self._write_ack(snap)
        if outcomes:
            self._heartbeat()  # the cluster view shows the new state at once

    def _record(self, field: str, outcome: Outcome, change: dict[str, Any], applied_at: float) -> None:
        delay = max(0.0, applied_at - float(change.get("ts", applied_at)))
        self.metrics.reload_propagation_seconds.observe(delay)
        done = time.time()
        self._outcomes[field] = {
            **outcome.to_dict(),
            "seq": change.get("seq", 0),
            "generation": change.get("generation"),
            # From the change being published to this node serving the result.
            "propagation_ms": round((done - float(change.get("ts", done))) * 1000, 3),
        }

    def _write_ack(self, snap: Snapshot) -> None:
        self._seq = snap.seq
        self.state.write_ack(
            self.node_id,
            {
                "node_id": self.node_id,
                "seq": snap.seq,
                "applied_at": time.time(),
                "outcomes": self._outcomes,
                "serving": self.service.serving(),
            },
        )

    def _heartbeat(self) -> None:
        counts = self.service.request_counts()
        delta = {mt: n - self._reported[mt] for mt, n in counts.items() if n > self._reported[mt]}
        stats = self.service.stats()
        self.state.heartbeat(
            self.node_id,
            {
                "node_id": self.node_id,
                "url": self.settings.resolved_public_url,
                "started_at": self.started_at,
                "heartbeat_at": time.time(),
                "applied_seq": self._seq,
                "cached": [{"model_type": m["model_type"], "version": m["version"]} for m in stats["models"]],
                "serving": self.service.serving(),
                "stats": {k: v for k, v in stats.items() if k != "models"},
            },
            ttl_s=3 * self.settings.heartbeat_s,
        )
        self.state.add_popularity(delta)
        self._reported.update(delta)

    # -- the API's cluster-wide calls ------------------------------------------
    async def pins(self) -> dict[str, str]:
        return await asyncio.to_thread(self.state.pins)

    async def set_pin(self, model_type: str, version: str, wait: bool, timeout_s: float) -> dict[str, Any]:
        change = await asyncio.to_thread(self.state.pin, model_type, version, self.service.registry)
        return await self._answer(change, wait, timeout_s)

    async def unpin(self, model_type: str, wait: bool, timeout_s: float) -> dict[str, Any]:
        change = await asyncio.to_thread(self.state.unpin, model_type)
        return await self._answer(change, wait, timeout_s)

    async def reload(
        self, model_type: str | None, version: str | None, wait: bool, timeout_s: float
    ) -> dict[str, Any]:
        change = await asyncio.to_thread(self.state.reload, model_type, version, self.service.registry)
        return await self._answer(change, wait, timeout_s)

    async def describe(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.state.describe)

    async def _answer(self, change: Change, wait: bool, timeout_s: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "scope": "cluster",
            "change": {
                "kind": change.kind,
                "model_type": change.model_type,
                "version": change.version or None,
                "seq": change.seq,
                "generation": change.generation,
            },
        }
        if change.seq == 0:
            body.update(ok=True, detail=f"{change.model_type} was not pinned; nothing changed", acks=[])
            return body
        if not wait:
            body.update(
                ok=True, detail="published; nodes apply it within milliseconds (wait=true to see acks)"
            )
            return body
        rows: list[AckRow] = await asyncio.to_thread(self.state.wait_for_acks, change, timeout_s)
        body["acks"] = [
            {
                "node_id": r.node_id,
                "outcome": r.outcome,
                "version": r.version,
                "detail": r.detail,
                "propagation_ms": r.propagation_ms,
            }
            for r in rows
        ]
        body["ok"] = all(r.outcome == "ok" for r in rows)
        return body


def _combine(outcomes: list[Outcome]) -> Outcome:
    failed = [o for o in outcomes if o.outcome != "ok"]
    detail = (
        "; ".join(f"{o.model_type}: {o.detail}" for o in failed) or f"reloaded {len(outcomes)} model type(s)"
    )
    return Outcome(ALL, "failed" if failed else "ok", None, None, detail)
