"""Membership and acknowledgements: live nodes' heartbeats, their acks, waiting for every ack.

A peer of coordinator.state over the same link: the desired state is there, who
is alive and what each node made of it is here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from coordinator.link import Link
from coordinator.scripts import BEAT, LIVE
from coordinator.wire import Ack, Change, Heartbeat, Outcome, WireError

__all__ = ["AckRow", "Membership"]


@dataclass
class AckRow:
    node_id: str
    outcome: Outcome
    version: str | None = None
    detail: str = ""
    propagation_ms: float | None = None
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Membership:
    """Live nodes and their acknowledgements, over one link (sync API, short timeouts)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._beat = link.script(BEAT)
        self._live = link.script(LIVE)

    # -- membership --------------------------------------------------------
    def heartbeat(self, beat: Heartbeat, ttl_s: float) -> None:
        k = self.link.keys
        ttl_ms = max(1, int(ttl_s * 1000))
        self.link.call(
            "heartbeat", self._beat, [k.members, k.heartbeats], [beat.node_id, beat.to_json(), ttl_ms]
        )

    def leave(self, node_id: str) -> None:
        def _leave() -> None:
            pipe = self.link.client.pipeline(transaction=True)
            pipe.zrem(self.link.keys.members, node_id).hdel(self.link.keys.heartbeats, node_id).execute()

        self.link.call("leave the cluster", _leave)

    def heartbeats(self) -> list[Heartbeat]:
        """Live nodes (heartbeat not expired), sorted by id; unreadable heartbeats are skipped.

        One round trip, O(live nodes): no SCAN over the database's keys.
        """

        def _values() -> list[tuple[str, Any]]:
            ids, values = self._live([self.link.keys.members, self.link.keys.heartbeats], [])
            return list(zip(ids, values, strict=True))

        beats: dict[str, Heartbeat] = {}
        for name, value in self.link.call("list nodes", _values):
            if value is None:
                continue  # swept between the member and its heartbeat
            try:
                beat = Heartbeat.from_json(value)
            except WireError as exc:
                self.link.throttle.warning(f"node:{name}", "ignoring heartbeat %s: %s", name[:200], exc)
                continue
            beats[beat.node_id] = beat
        return [beats[n] for n in sorted(beats)]

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes as JSON-ready dicts (the shape `status` and /api/v1/cluster show)."""
        return [b.to_dict() for b in self.heartbeats()]

    # -- acknowledgements --------------------------------------------------
    def write_ack(self, ack: Ack) -> None:
        """Store the ack (the truth) and publish it (wakes `wait_for_acks` at once), one round trip."""

        def _write() -> None:
            raw = ack.to_json()
            pipe = self.link.client.pipeline(transaction=False)
            pipe.set(self.link.keys.ack(ack.node_id), raw, ex=86400).publish(self.link.keys.acks_channel, raw)
            pipe.execute()

        self.link.call("acknowledge", _write)

    def acks(self, node_ids: Iterable[str]) -> dict[str, Ack]:
        """The last acknowledgement of each node that has a readable one."""
        ids = list(node_ids)
        if not ids:
            return {}
        values = self.link.call(
            "read acknowledgements", self.link.client.mget, [self.link.keys.ack(i) for i in ids]
        )
        out: dict[str, Ack] = {}
        for node_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            try:
                out[node_id] = Ack.from_json(value)
            except WireError as exc:
                self.link.throttle.warning(
                    f"ack:{node_id}", "ignoring acknowledgement of %s: %s", node_id, exc
                )
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

        pubsub = self.link.call("subscribe to acknowledgements", self._ack_subscription) if nodes else None
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
                message = self.link.call("wait for acknowledgements", pubsub.get_message, True, wait)
                while message is not None:
                    self._take_published(message, take)
                    message = self.link.call("wait for acknowledgements", pubsub.get_message, True, 0)
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
        pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.link.keys.acks_channel)
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
            self.link.throttle.warning(
                "ack-message", "ignoring a message on %s: %s", self.link.keys.acks_channel, exc
            )
            return
        take(ack.node_id, ack)


def _suppress_redis() -> contextlib.suppress:
    return contextlib.suppress(redis.RedisError, OSError)


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
