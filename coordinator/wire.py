"""The typed wire contract between operators, Redis and nodes: Change, Ack, Heartbeat.

Every message that crosses a process boundary is one class here, written with
`to_json()` and read back with `from_json()` by writer and reader alike. Bytes
read from Redis are untrusted (another version, a hand-edited key, a stray
PUBLISH): `from_json` validates like user input and raises `WireError`, never
KeyError/TypeError/UnicodeDecodeError, so callers can skip the junk and go on.

A change is named by (epoch, seq): `seq` restarts at 1 when Redis loses its
data, `epoch` (a random token created with the counters) does not repeat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from coordinator.errors import InvalidName, ModelCacheError
from coordinator.keys import ALL
from coordinator.versions import normalize_version, validate_model_type

MAX_MESSAGE_BYTES = 256 * 1024
"""Larger messages are refused unread: nothing legitimate comes near this."""
MAX_EPOCH_LEN = 64
MAX_DETAIL_LEN = 2000
MAX_TRACEPARENT_LEN = 128


class WireError(ModelCacheError):
    """A message from Redis that is not what the contract says (junk, wrong shape, too big)."""

    code = "bad_wire_message"

    def __init__(self, what: str, reason: str) -> None:
        self.what, self.reason = what, reason
        super().__init__(f"unreadable {what}: {reason}")


class Outcome(StrEnum):
    """How one node answered one change for one model type."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"


class ChangeKind(StrEnum):
    PIN = "pin"
    UNPIN = "unpin"
    RELOAD = "reload"
    CANARY = "canary"
    """Start or change a canary: `percent`% of requests that name no version go to `version`."""
    CANARY_ABORT = "canary_abort"
    """End a canary: 100% back to the served version."""
    PROMOTE = "promote"
    """Pin the canary's version and end the canary, in one change."""


# -- field checks (each raises WireError naming the field) ----------------------
def _obj(what: str, raw: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    if not isinstance(raw, str | bytes):
        raise WireError(what, f"expected JSON text, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise WireError(what, f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(what, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise WireError(what, f"expected a JSON object, got {type(data).__name__}")
    return data


def _str(what: str, data: Mapping[str, Any], key: str, default: str | None = None, limit: int = 256) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise WireError(what, f"{key!r} must be a string")
    if len(value) > limit:
        raise WireError(what, f"{key!r} longer than {limit} characters")
    return value


def _opt_str(what: str, data: Mapping[str, Any], key: str, limit: int = 256) -> str | None:
    return None if data.get(key) is None else _str(what, data, key, limit=limit)


def _sizes(raw: Any) -> dict[str, int]:
    """model type -> bytes; anything else (an older node, junk) counts as unknown sizes."""
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def _int(what: str, data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireError(what, f"{key!r} must be a non-negative integer")
    return value


def _num(what: str, data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError(what, f"{key!r} must be a finite number")
    return float(value)


def _opt_num(what: str, data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _num(what, data, key)


def _model_type(what: str, value: str) -> str:
    if value == ALL:
        return value
    try:
        return validate_model_type(value)
    except InvalidName as exc:
        raise WireError(what, str(exc)) from None


def _version(what: str, value: str | None) -> str | None:
    if not value:
        return value
    try:
        return normalize_version(value)
    except InvalidName as exc:
        raise WireError(what, str(exc)) from None


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


# -- messages ------------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """A model type's canary, as stored in the canaries hash (coordinator.keys)."""

    version: str
    percent: float

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Canary:
        w = "canary"
        data = _obj(w, raw)
        version = _version(w, _str(w, data, "version", limit=64))
        percent = _num(w, data, "percent")
        if not version:
            raise WireError(w, "'version' is empty")
        if not 0 <= percent <= 100:
            raise WireError(w, f"'percent' {percent:g} is outside 0-100")
        return cls(version, percent)

    def to_json(self) -> str:
        return _dumps(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One published change (written by the Lua script in coordinator.state).

    `seq` is 0 when nothing changed (unpinning an unpinned model).
    """

    kind: ChangeKind
    model_type: str
    version: str
    seq: int
    generation: int
    ts: float
    epoch: str = ""
    origin: str = ""
    traceparent: str = ""
    """The W3C trace context of the call that made the change ("" for none): each node's apply
    is a span of that trace. Opaque here; a node that cannot parse it just starts no span."""
    replicated: bool | None = field(default=None, compare=False)
    """Set by the writer, never on the wire: None when the primary had no replica, else whether
    a replica confirmed the change (WAIT) in time; False means a failover now could lose it."""

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Change:
        w = "change"
        data = _obj(w, raw)
        try:
            kind = ChangeKind(data.get("kind"))
        except ValueError:
            raise WireError(w, f"'kind' must be one of {', '.join(ChangeKind)}") from None
        # cjson encodes an empty Lua string as "", so no-version is "" on the wire.
        return cls(
            kind=kind,
            model_type=_model_type(w, _str(w, data, "model_type")),
            version=_version(w, _str(w, data, "version", "", limit=64)) or "",
            seq=_int(w, data, "seq"),
            generation=_int(w, data, "generation", 0),
            ts=_num(w, data, "ts"),
            epoch=_str(w, data, "epoch", "", limit=MAX_EPOCH_LEN),
            origin=_str(w, data, "origin", ""),
            traceparent=_str(w, data, "traceparent", "", limit=MAX_TRACEPARENT_LEN),
        )

    def to_json(self) -> str:
        data = {**asdict(self), "kind": self.kind.value}
        del data["replicated"]  # a fact about one write, not part of the change
        if not self.traceparent:
            del data["traceparent"]  # as the Lua script writes it
        return _dumps(data)

    def summary(self) -> str:
        what = f"{self.kind.value} {self.model_type}" + (f" {self.version}" if self.version else "")
        return f"change #{self.seq} ({what}" + (f" by {self.origin})" if self.origin else ")")


@dataclass(frozen=True)
class ModelAck:
    """A node's outcome for one model type, naming the change (epoch, seq) it answers."""

    model_type: str
    outcome: Outcome
    version: str | None = None
    previous: str | None = None
    detail: str = ""
    epoch: str = ""
    seq: int = 0
    generation: int | None = None
    propagation_ms: float | None = None

    @classmethod
    def from_dict(cls, data: Any) -> ModelAck:
        w = "acknowledgement outcome"
        if not isinstance(data, Mapping):
            raise WireError(w, "expected a JSON object")
        try:
            outcome = Outcome(data.get("outcome"))
        except ValueError:
            raise WireError(w, f"'outcome' must be one of {', '.join(Outcome)}") from None
        generation = data.get("generation")
        return cls(
            model_type=_str(w, data, "model_type", limit=256),
            outcome=outcome,
            version=_opt_str(w, data, "version", limit=64),
            previous=_opt_str(w, data, "previous", limit=64),
            detail=_str(w, data, "detail", "", limit=MAX_DETAIL_LEN),
            epoch=_str(w, data, "epoch", "", limit=MAX_EPOCH_LEN),
            seq=_int(w, data, "seq", 0),
            generation=None if generation is None else _int(w, data, "generation"),
            propagation_ms=_opt_num(w, data, "propagation_ms"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value}


@dataclass(frozen=True)
class Ack:
    """The last desired state a node applied (epoch, seq) and its outcome per model type."""

    node_id: str
    epoch: str
    seq: int
    applied_at: float
    outcomes: dict[str, ModelAck] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)

    def answers(self, change: Change) -> bool:
        """True once this node applied a state that includes `change` (same epoch, seq at least)."""
        return self.epoch == change.epoch and self.seq >= change.seq

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Ack:
        w = "acknowledgement"
        data = _obj(w, raw)
        outcomes = data.get("outcomes", {})
        serving = data.get("serving", {})
        if not isinstance(outcomes, dict) or not isinstance(serving, dict):
            raise WireError(w, "'outcomes' and 'serving' must be JSON objects")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in serving.items()):
            raise WireError(w, "'serving' must map model types to versions")
        return cls(
            node_id=_str(w, data, "node_id"),
            epoch=_str(w, data, "epoch", "", limit=MAX_EPOCH_LEN),
            seq=_int(w, data, "seq"),
            applied_at=_num(w, data, "applied_at", 0.0),
            outcomes={k: ModelAck.from_dict(v) for k, v in outcomes.items()},
            serving=dict(serving),
        )

    def to_json(self) -> str:
        return _dumps({**asdict(self), "outcomes": {k: v.to_dict() for k, v in self.outcomes.items()}})


@dataclass(frozen=True)
class Heartbeat:
    """A node's membership record: who it is, what it caches and serves, its cache stats."""

    node_id: str
    url: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    epoch: str = ""
    applied_seq: int = 0
    cached: list[dict[str, str]] = field(default_factory=list)
    serving: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes of each cached model type's artifact: placement balances bytes with them."""

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Heartbeat:
        w = "heartbeat"
        data = _obj(w, raw)
        cached, serving, stats = data.get("cached", []), data.get("serving", {}), data.get("stats", {})
        if not isinstance(cached, list) or not all(
            isinstance(c, dict) and isinstance(c.get("model_type"), str) and isinstance(c.get("version"), str)
            for c in cached
        ):
            raise WireError(w, "'cached' must be a list of {model_type, version}")
        if not isinstance(serving, dict) or not isinstance(stats, dict):
            raise WireError(w, "'serving' and 'stats' must be JSON objects")
        return cls(
            node_id=_str(w, data, "node_id"),
            url=_str(w, data, "url", "", limit=2048),
            started_at=_num(w, data, "started_at", 0.0),
            heartbeat_at=_num(w, data, "heartbeat_at", 0.0),
            epoch=_str(w, data, "epoch", "", limit=MAX_EPOCH_LEN),
            applied_seq=_int(w, data, "applied_seq", 0),
            cached=[{"model_type": c["model_type"], "version": c["version"]} for c in cached],
            serving={str(k): str(v) for k, v in serving.items()},
            stats=dict(stats),
            sizes=_sizes(data.get("sizes", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return _dumps(self.to_dict())
