"""Every Redis key and channel name modelcache uses; no other module spells one.

One configurable prefix (default `modelcache:`) lets two clusters share a Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "modelcache:"
ALL = "*"
"""The generation field that counts reload-everything requests."""


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def pins(self) -> str:
        """Hash: model_type -> pinned version."""
        return f"{self.prefix}pins"

    @property
    def canaries(self) -> str:
        """Hash: model_type -> its canary as JSON (`{"version", "percent"}`, coordinator.wire.Canary)."""
        return f"{self.prefix}canaries"

    @property
    def generations(self) -> str:
        """Hash: model_type (or `*`) -> reload generation, bumped by every change."""
        return f"{self.prefix}generations"

    @property
    def changes(self) -> str:
        """Hash: model_type (or `*`) -> its last change as JSON (kind, version, seq, origin, ts)."""
        return f"{self.prefix}changes"

    @property
    def epoch(self) -> str:
        """String: random token created with the counters; a new one means Redis lost its data.

        `seq` and generations restart at 1 after a FLUSHALL or an empty restart, so a change
        is named by (epoch, seq), never by seq alone.
        """
        return f"{self.prefix}epoch"

    @property
    def seq(self) -> str:
        """Counter: one number per change, cluster-wide; acknowledgements refer to it."""
        return f"{self.prefix}seq"

    @property
    def events(self) -> str:
        """Pub/sub channel: wakes nodes; carries no state a node could not re-read."""
        return f"{self.prefix}events"

    @property
    def popularity(self) -> str:
        """Sorted set: model_type -> requests served cluster-wide (for warm start)."""
        return f"{self.prefix}popularity"

    @property
    def members(self) -> str:
        """Sorted set: node_id -> when its heartbeat expires (ms, Redis clock); live = score > now.

        Listing live nodes is then O(live nodes), not a SCAN over every key in the database.
        """
        return f"{self.prefix}members"

    @property
    def heartbeats(self) -> str:
        """Hash: node_id -> its last heartbeat (JSON); fields leave with their `members` entry."""
        return f"{self.prefix}heartbeats"

    @property
    def acks_channel(self) -> str:
        """Pub/sub channel: each acknowledgement (JSON) right after it is written; wakes waiters."""
        return f"{self.prefix}acks"

    @property
    def placement(self) -> str:
        """String: the placement (coordinator.placement.Assignment as JSON) the agents apply."""
        return f"{self.prefix}placement"

    @property
    def placement_leader(self) -> str:
        """String with TTL: the id of the load balancer agent that computes the placement."""
        return f"{self.prefix}placement:leader"

    @property
    def placement_rates(self) -> str:
        """Hash: agent id -> its HAProxy's recent request rate per model (JSON, with a timestamp)."""
        return f"{self.prefix}placement:rates"

    @property
    def placement_sizes(self) -> str:
        """Hash: model_type -> artifact bytes, as nodes that cached it reported (kept when evicted)."""
        return f"{self.prefix}placement:sizes"

    def node(self, node_id: str) -> str:
        """String with TTL: a node's heartbeat before `members`/`heartbeats` (no longer written)."""
        return f"{self.prefix}node:{node_id}"

    @property
    def node_pattern(self) -> str:
        return f"{self.prefix}node:*"

    def ack(self, node_id: str) -> str:
        """String: the last change a node applied and the outcome per model type (JSON)."""
        return f"{self.prefix}ack:{node_id}"
