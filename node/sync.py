"""Apply cluster state from Redis on this node: subscriber, reconcile loop, heartbeat.

Two background threads, neither on the request path (invariant 4):
* the subscriber listens on the events channel and only wakes the loop;
* the loop reconciles (reads pins and generations, applies what differs, acks)
  when woken, on every (re)connect and every RECONCILE_INTERVAL_S, and
  heartbeats every HEARTBEAT_S. A node that missed every event still converges
  (invariant 3). Redis errors mark the node disconnected and back off with jitter.

Neither thread ever dies: everything is caught at its top, counted in
`modelcache_background_errors_total{thread}`, and `health()` says when one is stuck.
Everything read from Redis is untrusted; one bad model or message fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from coordinator.errors import ClusterUnavailable
from coordinator.keys import Keys
from coordinator.state import ClusterState, LogThrottle, connect
from coordinator.wire import Canary, Change, Heartbeat, ModelAck, WireError
from node.background import UNHEALTHY_AFTER, Backoff, SyncHealth, ThreadHealth
from node.metrics import NodeMetrics
from node.reconcile import Reconciler
from node.service import ModelService
from node.settings import NodeSettings

log = logging.getLogger("modelcache.sync")


class ClusterSync(Reconciler):
    """Keeps one node in step with the cluster, and carries the node's cluster-wide admin calls."""

    def __init__(
        self,
        settings: NodeSettings,
        service: ModelService,
        metrics: NodeMetrics,
        rand: Callable[[], float] | None = None,
    ) -> None:
        assert settings.redis_url, "ClusterSync needs MODELCACHE_REDIS_URL"
        self.settings, self.service, self.metrics = settings, service, metrics
        self.node_id = settings.resolved_node_id
        self.keys = Keys(settings.redis_prefix)
        self.state = ClusterState.from_url(
            settings.redis_url,
            settings.redis_prefix,
            origin=self.node_id,
            replica_timeout_s=settings.redis_replica_wait_s,
        )
        self.started_at = time.time()
        self._applied: dict[str, int] | None = None  # generations applied; None until first sync
        self._epoch = ""  # the epoch `_applied` belongs to
        self._outcomes: dict[str, ModelAck] = {}
        self._bad_pins: dict[str, str] = {}
        self._canaries: dict[str, Canary] = {}  # the canaries this node last applied (or tried)
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._health: dict[str, ThreadHealth] = {}
        self._rand = rand
        self._throttle = LogThrottle()
        self._reported: Counter[str] = Counter()
        self._connected = False
        metrics.redis_connected.set(0)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        for name, body in (("subscriber", self._subscribe_forever), ("loop", self._loop_forever)):
            self._health[name] = ThreadHealth()
            thread = threading.Thread(
                target=self._guard, args=(name, body), name=f"modelcache-{name}", daemon=True
            )
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

    def problems(self) -> list[str]:
        """What /readyz reports for cluster sync; empty when healthy."""
        return self.health().problems

    def health(self) -> SyncHealth:
        """Problems that should keep this node out of rotation (not Redis being down: invariant 4)."""
        problems = []
        if not self._stop.is_set():
            for thread in self._threads:
                if not thread.is_alive():
                    problems.append(f"{thread.name} thread is not running")
        for name, h in self._health.items():
            if h.consecutive >= UNHEALTHY_AFTER:
                problems.append(f"{name}: {h.consecutive} errors in a row, last: {h.last_error}")
        errors = {name: h.errors for name, h in self._health.items()}
        return SyncHealth(problems, self._connected, errors)

    def warm(self) -> list[str]:
        """Warm start (invariant 7): adopt pins, then preload pinned and popular models."""
        try:
            self._reconcile()
        except ClusterUnavailable as exc:
            log.warning("warm-up without cluster state: %s", exc)
            return self.service.warm(self.settings.warmup)
        except Exception as exc:  # warm-up must end, or /readyz stays 503 for ever
            self._failed("warmup", exc)
        wanted = list(self.settings.warmup) + sorted(self.service.pins)
        if self.settings.warmup_popular:
            with contextlib.suppress(ClusterUnavailable):
                wanted += self.state.popular(self.service.cache.capacity)
        unique = list(dict.fromkeys(wanted))
        return self.service.warm(unique)

    # -- threads -------------------------------------------------------------
    def _guard(self, name: str, body: Callable[[Backoff], None]) -> None:
        """A background thread's top: nothing escapes, every failure is counted and retried."""
        backoff = Backoff(rand=self._rand)
        while not self._stop.is_set():
            try:
                body(backoff)
            except (redis.RedisError, OSError, ClusterUnavailable) as exc:
                self._set_connected(False, f"{name}: {exc}")
            except Exception as exc:  # a dead thread is worse than any error
                self._failed(name, exc)
            self._stop.wait(backoff.next())

    def _failed(self, name: str, exc: BaseException) -> None:
        h = self._health.setdefault(name, ThreadHealth())
        h.errors += 1
        h.consecutive += 1
        h.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.metrics.background_errors.labels(name).inc()
        log.error("%s: unexpected error, going on: %s", name, h.last_error, exc_info=exc)

    def _succeeded(self, name: str) -> None:
        h = self._health.get(name)
        if h is not None:
            h.consecutive = 0

    def _subscribe_forever(self, backoff: Backoff) -> None:
        # With Sentinel, each (re)connection asks for the current primary: after a failover
        # the broken link raises, the guard backs off, and this finds the new primary.
        client = connect(self.settings.redis_url or "", timeout=5, decode_responses=False)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.events)
            backoff.reset()
            self._succeeded("subscriber")
            self._wake.set()  # (re)connected: reconcile, we may have missed events
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is not None and message.get("type") == "message":
                    self._on_event(message.get("data"))
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
            client.close()

    def _on_event(self, data: Any) -> None:
        """Anyone can PUBLISH here: only a well-formed change wakes the loop."""
        try:
            change = Change.from_json(data if isinstance(data, bytes) else b"")
        except WireError as exc:
            self._throttle.warning("event", "ignoring a message on %s: %s", self.keys.events, exc, logger=log)
            return
        log.debug("event: %s", change.summary())
        self._wake.set()

    def _loop_forever(self, backoff: Backoff) -> None:
        interval = self.settings.reconcile_interval_s
        next_reconcile = next_heartbeat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            woken = self._wake.wait(max(0.0, min(next_reconcile, next_heartbeat) - now))
            if self._stop.is_set():
                return
            if woken:
                # Only a wake is consumed: clearing after a heartbeat timeout would drop an
                # event that landed just then, and the change would wait for the next reconcile.
                self._wake.clear()
            now = time.monotonic()
            try:
                rejoining = not self._connected
                if woken or now >= next_reconcile:
                    self._reconcile()
                    next_reconcile = time.monotonic() + interval
                    # Only a reconcile proves the loop works (a heartbeat alone would hide a stuck one).
                    backoff.reset()
                    self._succeeded("loop")
                # Back from an outage: heartbeat at once, our membership key has likely expired.
                if now >= next_heartbeat or (rejoining and self._connected):
                    self._heartbeat()
                    next_heartbeat = time.monotonic() + self.settings.heartbeat_s
            except ClusterUnavailable as exc:
                self._set_connected(False, str(exc))
                # Retry soon, then less often while Redis stays away; jittered across the fleet.
                next_reconcile = next_heartbeat = time.monotonic() + backoff.next()
            except Exception as exc:
                self._failed("loop", exc)
                next_reconcile = time.monotonic() + min(interval, backoff.next())

    def _set_connected(self, connected: bool, why: str = "") -> None:
        if connected != self._connected:
            if connected:
                log.info("connected to Redis")
            else:
                log.warning("lost Redis, serving from the local cache and registry: %s", why)
        self._connected = connected
        self.metrics.redis_connected.set(1 if connected else 0)

    def _heartbeat(self) -> None:
        counts = self.service.request_counts()
        delta = {mt: n - self._reported[mt] for mt, n in counts.items() if n > self._reported[mt]}
        stats = self.service.stats()
        beat = Heartbeat(
            node_id=self.node_id,
            url=self.settings.resolved_public_url,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            epoch=self._epoch,
            applied_seq=self._seq,
            cached=[{"model_type": m["model_type"], "version": m["version"]} for m in stats["models"]],
            serving=self.service.serving(),
            stats={k: v for k, v in stats.items() if k != "models"},
        )
        self.state.heartbeat(beat, ttl_s=3 * self.settings.heartbeat_s)
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

    async def canaries(self) -> dict[str, Any]:
        """Canaries in Redis, each with every live node's last outcome for its model type."""
        return await asyncio.to_thread(self._canaries_view)

    def _canaries_view(self) -> dict[str, Any]:
        canaries = self.state.canaries()
        acks = self.state.acks(b.node_id for b in self.state.heartbeats()) if canaries else {}
        view: dict[str, Any] = {}
        for model_type, canary in sorted(canaries.items()):
            nodes = []
            for node_id, ack in sorted(acks.items()):
                outcome = ack.outcomes.get(model_type)
                nodes.append(
                    {
                        "node_id": node_id,
                        "outcome": outcome.outcome.value if outcome else None,
                        "detail": outcome.detail if outcome else "",
                        "serving": ack.serving.get(model_type),
                    }
                )
            view[model_type] = {**canary.to_dict(), "nodes": nodes}
        return {"canaries": view}

    async def set_canary(
        self, model_type: str, version: str, percent: object, wait: bool, timeout_s: float
    ) -> dict[str, Any]:
        change = await asyncio.to_thread(
            self.state.canary, model_type, version, percent, self.service.registry
        )
        return await self._answer(change, wait, timeout_s)

    async def abort_canary(self, model_type: str, wait: bool, timeout_s: float) -> dict[str, Any]:
        change = await asyncio.to_thread(self.state.abort_canary, model_type)
        return await self._answer(change, wait, timeout_s)

    async def promote_canary(self, model_type: str, wait: bool, timeout_s: float) -> dict[str, Any]:
        change = await asyncio.to_thread(self.state.promote, model_type, self.service.registry)
        return await self._answer(change, wait, timeout_s)

    async def _answer(self, change: Change, wait: bool, timeout_s: float) -> dict[str, Any]:
        return await asyncio.to_thread(self.state.answer, change, wait, timeout_s)
