"""Apply cluster state from Redis on this node: subscriber, reconcile loop, heartbeat.

Two background threads, neither on the request path (invariant 4):
* the subscriber listens on the events channel and only wakes the loop;
* the loop reconciles (reads pins and generations, applies what differs, acks)
  when woken, on every (re)connect and every RECONCILE_INTERVAL_S, and
  heartbeats every HEARTBEAT_S. A node that missed every event still converges
  (invariant 3). Redis errors mark the node disconnected and back off with jitter;
  a Redis that answers but refuses (out of memory, read-only, ACL: `ClusterRefusing`)
  backs off the same way and shows in `modelcache_redis_refusing` instead.

Neither thread ever dies: everything is caught at its top, counted in
`modelcache_background_errors_total{thread}` and logged at a bounded rate (a traceback per
thread per 30 s), and `health()` says when one is stuck. None of it is a readiness problem:
the node serves from its cache whatever Redis does (docs/design.md, "Readiness").
Everything read from Redis is untrusted; one bad model or message fails alone.

What to do with a snapshot of the desired state is the `Reconciler`'s (node.reconcile,
handed in); operator commands are coordinator.control's. This module is the threads,
the backoff and the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from coordinator.errors import ClusterRefusing, ClusterUnavailable
from coordinator.link import REFUSALS, Link, LogThrottle, refusal
from coordinator.membership import Membership
from coordinator.state import ClusterState
from coordinator.wire import Change, Heartbeat, WireError
from node.background import UNHEALTHY_AFTER, Backoff, SyncHealth, ThreadHealth
from node.metrics import NodeMetrics
from node.reconcile import Reconciler

log = logging.getLogger("modelcache.sync")
MIN_MEMBER_TTL_S = 0.5
"""The shortest membership lifetime, whatever MODELCACHE_HEARTBEAT_S says."""


@dataclass(frozen=True)
class NodeReport:
    """What this node's heartbeat says about it besides its id: the cluster view's row."""

    cached: list[dict[str, str]]
    serving: dict[str, str]
    stats: dict[str, Any]
    request_counts: dict[str, int] = field(default_factory=dict)
    """Requests per model type since start (their growth feeds cluster-wide popularity)."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Artifact bytes per cached model type (for placement)."""


@dataclass(frozen=True)
class SyncTiming:
    reconcile_interval_s: float = 5.0
    heartbeat_s: float = 2.0


class ClusterSync:
    """Keeps one node in step with the cluster: subscriber and loop threads, heartbeat, backoff."""

    def __init__(
        self,
        link: Link,
        state: ClusterState,
        members: Membership,
        reconciler: Reconciler,
        metrics: NodeMetrics,
        *,
        url: str,
        report: Callable[[], NodeReport],
        timing: SyncTiming = SyncTiming(),
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.link, self.state, self.members, self.reconciler = link, state, members, reconciler
        self.metrics, self.timing, self.url, self._report = metrics, timing, url, report
        self.node_id = reconciler.node_id
        self.started_at = time.time()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._health: dict[str, ThreadHealth] = {}
        self._rand = rand
        self._throttle = LogThrottle()
        self._reported: Counter[str] = Counter()
        self._connected = False
        self._lost = ""
        """Why Redis was lost, while it is (empty before the first attempt and once back)."""
        self._refusing: str | None = None
        """Redis' reason while it answers but refuses our writes, else None."""
        metrics.redis_connected.set(0)
        metrics.redis_refusing.set(0)

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
            self.members.leave(self.node_id)  # drop out of the cluster view at once
        self.link.close()

    def problems(self) -> list[str]:
        """What /readyz reports for cluster sync; empty when healthy."""
        return self.health().problems

    def health(self) -> SyncHealth:
        """Degraded cluster sync, for /readyz's body and logs; never a reason to leave rotation."""
        problems = []
        if not self._stop.is_set():
            for thread in self._threads:
                if not thread.is_alive():
                    problems.append(f"{thread.name} thread is not running")
        for name, h in self._health.items():
            if h.consecutive >= UNHEALTHY_AFTER:
                problems.append(f"{name}: {h.consecutive} errors in a row, last: {h.last_error}")
        if self._refusing is not None:
            problems.append(
                f"Redis is reachable but {REFUSALS[self._refusing]}: pins, reloads and "
                "heartbeats from this node wait until it accepts writes"
            )
        elif self._lost and not self._connected and not self._stop.is_set():
            problems.append(f"Redis is unreachable, serving from the local cache: {self._lost}"[:400])
        errors = {name: h.errors for name, h in self._health.items()}
        return SyncHealth(problems, self._connected, errors)

    def warm(
        self, preload: Callable[[list[str]], list[str]], wanted: Iterable[str], popular: int = 0
    ) -> list[str]:
        """Warm start (invariant 7): adopt the cluster state, then `preload` the wanted, pinned and
        (up to `popular`) the cluster's most requested model types; return what loaded."""
        static = list(wanted)
        try:
            self._reconcile()
        except ClusterUnavailable as exc:
            log.warning("warm-up without cluster state: %s", exc)
            return preload(static)
        except Exception as exc:  # warm-up must end, or /readyz stays 503 for ever
            self._failed("warmup", exc)
        static += sorted(self.reconciler.reloads.pins())
        if popular:
            with contextlib.suppress(ClusterUnavailable):
                static += self.state.popular(popular)
        return preload(list(dict.fromkeys(static)))

    # -- threads -------------------------------------------------------------
    def _guard(self, name: str, body: Callable[[Backoff], None]) -> None:
        """A background thread's top: nothing escapes, every failure is counted and retried."""
        backoff = Backoff(rand=self._rand)
        while not self._stop.is_set():
            try:
                body(backoff)
            except ClusterRefusing as exc:
                self._refused(exc.reason, f"{name}: {exc}")
            except (redis.RedisError, OSError, ClusterUnavailable) as exc:
                reason = refusal(exc)  # the subscriber talks to Redis directly, not through Link.call
                if reason is not None:
                    self._refused(reason, f"{name}: {exc}")
                else:
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
        if self._throttle.allow(f"failed:{name}"):  # an error that repeats must not flood the log
            log.error("%s: unexpected error, going on: %s", name, h.last_error, exc_info=exc)

    def _succeeded(self, name: str) -> None:
        h = self._health.get(name)
        if h is not None:
            h.consecutive = 0

    def _subscribe_forever(self, backoff: Backoff) -> None:
        # With Sentinel, each (re)connection asks for the current primary: after a failover
        # the broken link raises, the guard backs off, and this finds the new primary.
        client = self.link.events_client(timeout=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.link.keys.events)
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
            self._throttle.warning(
                "event", "ignoring a message on %s: %s", self.link.keys.events, exc, logger=log
            )
            return
        log.debug("event: %s", change.summary())
        self._wake.set()

    def _loop_forever(self, backoff: Backoff) -> None:
        interval = self.timing.reconcile_interval_s
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
            beating = False
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
                    beating = True
                    self._heartbeat()
                    next_heartbeat = time.monotonic() + self.timing.heartbeat_s
            except ClusterRefusing as exc:
                self._refused(exc.reason, str(exc))
                next_reconcile = next_heartbeat = time.monotonic() + backoff.next()
            except ClusterUnavailable as exc:
                self._set_connected(False, str(exc))
                # Retry soon, then less often while Redis stays away; jittered across the fleet.
                next_reconcile = next_heartbeat = time.monotonic() + backoff.next()
            except Exception as exc:
                self._failed("loop", exc)
                if beating:  # it used to retry at once, in a loop, spinning a core while it failed
                    next_heartbeat = time.monotonic() + backoff.next()
                else:  # heartbeats go on while reconciling fails: the node is alive
                    next_reconcile = time.monotonic() + min(interval, backoff.next())

    def _set_connected(self, connected: bool, why: str = "") -> None:
        if connected != self._connected:
            if connected:
                log.info("connected to Redis")
            else:
                log.warning("lost Redis, serving from the local cache and registry: %s", why)
        self._connected = connected
        self._lost = "" if connected else (why or "no answer")
        self.metrics.redis_connected.set(1 if connected else 0)

    def _refused(self, reason: str, why: str) -> None:
        """Redis answered and refused: reachable (connected, as the metric says), but degraded."""
        self._set_connected(True)
        self.metrics.redis_refusals.labels(reason).inc()
        self.metrics.redis_refusing.set(1)
        if self._refusing != reason:
            log.warning("Redis refuses this node's commands (%s), serving from the cache: %s", reason, why)
        else:
            self._throttle.warning(f"refused:{reason}", "Redis refuses (%s): %s", reason, why, logger=log)
        self._refusing = reason

    def _accepted(self) -> None:
        if self._refusing is not None:
            log.info("Redis accepts this node's writes again")
        self._refusing = None
        self.metrics.redis_refusing.set(0)

    def _reconcile(self) -> None:
        """Read the desired state, apply it (the reconciler), acknowledge; heartbeat if it changed."""
        snap = self.state.read()
        self._set_connected(True)
        result = self.reconciler.step(snap)
        self.members.write_ack(result.ack)
        self._accepted()
        if result.applied:
            self._heartbeat()  # the cluster view shows the new state at once

    def _heartbeat(self) -> None:
        report = self._report()
        counts = report.request_counts
        delta = {mt: n - self._reported[mt] for mt, n in counts.items() if n > self._reported[mt]}
        beat = Heartbeat(
            node_id=self.node_id,
            url=self.url,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            epoch=self.reconciler.epoch,
            applied_seq=self.reconciler.seq,
            cached=report.cached,
            serving=report.serving,
            stats=report.stats,
            sizes=report.sizes,
        )
        # Three missed heartbeats, but never under half a second: a TTL of a few milliseconds
        # (tests beat every 2 ms) expires while a loaded machine has not scheduled this thread.
        self.members.heartbeat(beat, ttl_s=max(3 * self.timing.heartbeat_s, MIN_MEMBER_TTL_S))
        self.state.add_popularity(delta)
        self._reported.update(delta)
        self._accepted()
