"""Operator commands: one home for the CLI's Redis mode and the node's admin routes.

Each command is one use case: check it against the registry, publish the change
(coordinator.state), and, when asked, wait for every live node's acknowledgement
(coordinator.membership) and answer in the one document both front ends print.
`modelcache pin ... --redis-url` and `PUT /api/v1/pins/...` run the same code
here, so their answers cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from coordinator.errors import InvalidName
from coordinator.keys import ALL, Keys
from coordinator.link import Link
from coordinator.membership import AckRow, Membership
from coordinator.registry import Registry
from coordinator.state import ClusterState
from coordinator.versions import normalize_version, validate_model_type
from coordinator.wire import Canary, Change, ChangeKind, Outcome

__all__ = ["Control", "nothing_changed", "parse_percent"]


class Control:
    """The operator's commands over the cluster state, its members and the registry."""

    def __init__(self, state: ClusterState, members: Membership, registry: Registry) -> None:
        self.state, self.members, self.registry = state, members, registry

    @classmethod
    def connect(
        cls,
        url: str,
        registry: Registry,
        prefix: str = Keys.prefix,
        *,
        origin: str = "cli",
        replica_timeout_s: float = 1.0,
    ) -> Control:
        """A Control on its own link to `url` (close() closes it): the CLI's Redis mode."""
        link = Link.from_url(url, prefix)
        state = ClusterState(link, origin, replica_timeout_s=replica_timeout_s)
        return cls(state, Membership(link), registry)

    def close(self) -> None:
        self.state.link.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- changes: checked against the registry before anything is published ----------------
    def pin(self, model_type: str, version: str) -> Change:
        """Pin `model_type` to `version` everywhere; refused unless the registry has it."""
        version = self.registry.metadata(model_type, version).version  # raises before publishing
        return self.state.publish(ChangeKind.PIN, model_type, version)

    def unpin(self, model_type: str) -> Change:
        return self.state.publish(ChangeKind.UNPIN, validate_model_type(model_type))

    def reload(self, model_type: str | None, version: str | None = None) -> Change:
        """Ask every node to reload one model type (or one exact version), or everything."""
        if model_type is None:
            return self.state.publish(ChangeKind.RELOAD, ALL)
        if version is not None:
            version = self.registry.metadata(model_type, normalize_version(version)).version
        else:
            self.registry.versions(model_type)
        return self.state.publish(ChangeKind.RELOAD, model_type, version or "")

    def canary(self, model_type: str, version: str, percent: object) -> Change:
        """Send `percent`% of `model_type`'s requests that name no version to `version`, everywhere.

        Refused (InvalidName) unless 0 <= percent <= 100, and unless the registry has the version.
        """
        share = parse_percent(percent)
        version = self.registry.metadata(model_type, normalize_version(version)).version
        return self.state.publish(ChangeKind.CANARY, model_type, version, Canary(version, share))

    def abort_canary(self, model_type: str) -> Change:
        """End the canary of `model_type`: 100% back to the served version (seq 0 if none ran)."""
        return self.state.publish(ChangeKind.CANARY_ABORT, validate_model_type(model_type))

    def promote(self, model_type: str) -> Change:
        """Pin the canary's version and end the canary, in one change; CanaryNotFound if none runs."""
        canary = self.state.canaries().get(validate_model_type(model_type))
        if canary is not None:
            self.registry.metadata(model_type, canary.version)  # removed since? refuse before publishing
        return self.state.publish(ChangeKind.PROMOTE, model_type)

    # -- answers ---------------------------------------------------------------------------
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
                f"{self.state.replica_timeout_s:g}s: if the primary fails now it may be lost; check the "
                "replicas (INFO replication) and repeat the call if it is missing"
            )
        if not wait:
            detail = "published; nodes apply it within milliseconds (wait=true to see acks)"
            return doc | {"ok": change.replicated is not False, "detail": detail}
        rows = self.members.wait_for_acks(change, timeout_s)
        doc["acks"] = [_ack_row(r) for r in rows]
        doc["ok"] = change.replicated is not False and all(r.outcome is Outcome.OK for r in rows)
        return doc

    # -- views -----------------------------------------------------------------------------
    def pins(self) -> dict[str, str]:
        return self.state.pins()

    def describe(self) -> dict[str, Any]:
        """Live nodes, pins, canaries, generations, seq and epoch (`status`, `/api/v1/cluster`)."""
        snap = self.state.read()
        return {
            "nodes": self.members.nodes(),
            "pins": snap.pins,
            "canaries": {mt: c.to_dict() for mt, c in snap.canaries.items()},
            "generations": snap.generations,
            "seq": snap.seq,
            "epoch": snap.epoch,
        }

    def canaries(self) -> dict[str, Any]:
        """Canaries in Redis, each with every live node's last outcome for its model type."""
        canaries = self.state.canaries()
        acks = self.members.acks(b.node_id for b in self.members.heartbeats()) if canaries else {}
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


def _ack_row(row: AckRow) -> dict[str, Any]:
    return {
        "node_id": row.node_id,
        "outcome": row.outcome.value,
        "version": row.version,
        "detail": row.detail,
        "propagation_ms": row.propagation_ms,
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
