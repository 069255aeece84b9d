"""The wire contract: every message round-trips, and junk raises WireError (never anything else)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from coordinator.wire import (
    MAX_MESSAGE_BYTES,
    Ack,
    Change,
    ChangeKind,
    Heartbeat,
    ModelAck,
    Outcome,
    WireError,
)

CHANGE = Change(ChangeKind.PIN, "churn", "1.0.0", 3, 2, 1700000000.5, "e1", "cli@h")


def test_messages_round_trip() -> None:
    assert Change.from_json(CHANGE.to_json()) == CHANGE
    assert Change.from_json(CHANGE.to_json().encode()) == CHANGE  # bytes, as the subscriber gets them
    outcome = ModelAck("churn", Outcome.FAILED, "1.0.0", "0.9", "sha256 mismatch", "e1", 3, 2, 4.5)
    ack = Ack("n1", "e1", 3, 1700000001.0, {"churn": outcome}, {"churn": "1.0.0"})
    assert Ack.from_json(ack.to_json()) == ack
    assert json.loads(ack.to_json())["outcomes"]["churn"]["outcome"] == "failed"
    beat = Heartbeat("n1", "http://n1", 1.0, 2.0, "e1", 3, [{"model_type": "m", "version": "1.0"}], {}, {})
    assert Heartbeat.from_json(beat.to_json()) == beat
    # The JSON field names `status` and /api/v1/cluster show are part of the contract.
    assert {"node_id", "url", "cached", "stats", "applied_seq", "heartbeat_at"} <= set(beat.to_dict())


def test_a_change_is_named_by_epoch_and_seq() -> None:
    ack = Ack("n1", "e1", 5, 0.0)
    assert ack.answers(CHANGE)  # same epoch, seq 5 >= 3
    # Redis lost its data: a new epoch restarts seq at 1, so an old ack with a higher seq answers nothing.
    assert not ack.answers(Change(ChangeKind.RELOAD, "churn", "", 1, 1, 0.0, "e2"))
    assert not Ack("n1", "e1", 2, 0.0).answers(CHANGE)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\x00\x81 not utf-8",
        b"not json",
        b"[1, 2, 3]",
        b"x" * (MAX_MESSAGE_BYTES + 1),
        b"[" * 100_000,  # deep nesting
        b"{}",
        json.dumps({"kind": "drop-table", "model_type": "m", "seq": 1, "ts": 1}).encode(),
        json.dumps({"kind": "pin", "model_type": "../etc", "version": "1", "seq": 1, "ts": 1}).encode(),
        json.dumps({"kind": "pin", "model_type": "m", "version": "not a version!!", "seq": 1, "ts": 1}),
        json.dumps({"kind": "pin", "model_type": "m", "version": "1", "seq": -1, "ts": 1}),
        json.dumps({"kind": "pin", "model_type": "m", "version": "1", "seq": True, "ts": 1}),
        json.dumps({"kind": "pin", "model_type": "m", "version": "1", "seq": 1, "ts": "now"}),
        json.dumps({"kind": "pin", "model_type": 7, "version": "1", "seq": 1, "ts": 1}),
        '{"kind": "pin", "model_type": "m", "seq": 1, "ts": NaN}',
        12,
    ],
)
def test_junk_changes_raise_wire_error(raw: object) -> None:
    with pytest.raises(WireError, match="unreadable change"):
        Change.from_json(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        '{"node_id": "n1", "seq": "3"}',
        '{"node_id": "n1", "seq": 3, "outcomes": {"m": {"outcome": "maybe"}}}',
        '{"node_id": "n1", "seq": 3, "outcomes": {"m": "ok"}}',
        '{"node_id": "n1", "seq": 3, "outcomes": []}',
        '{"node_id": "n1", "seq": 3, "serving": {"m": 1}}',
    ],
)
def test_junk_acks_raise_wire_error(raw: str) -> None:
    with pytest.raises(WireError, match="unreadable acknowledgement"):
        Ack.from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        '{"url": "x"}',
        '{"node_id": 5}',
        '{"node_id": "n", "cached": [1]}',
        '{"node_id": "n", "stats": []}',
    ],
)
def test_junk_heartbeats_raise_wire_error(raw: str) -> None:
    with pytest.raises(WireError, match="unreadable heartbeat"):
        Heartbeat.from_json(raw)


def test_outcome_is_an_enum_that_serialises_as_its_value() -> None:
    assert Outcome("ok") is Outcome.OK and f"{Outcome.TIMEOUT}" == "timeout"
    assert json.dumps({"outcome": Outcome.FAILED}) == '{"outcome": "failed"}'


def test_a_heartbeat_carries_cached_model_sizes_and_ignores_junk_ones() -> None:
    beat = Heartbeat("n1", "http://n1", sizes={"m": 1234})
    assert Heartbeat.from_json(beat.to_json()).sizes == {"m": 1234}
    junk = '{"node_id": "n1", "sizes": {"a": -1, "b": "12", "c": true, "d": 5}}'
    assert Heartbeat.from_json(junk).sizes == {"d": 5}
    assert Heartbeat.from_json('{"node_id": "n1", "sizes": [1]}').sizes == {}
    assert Heartbeat.from_json('{"node_id": "n1"}').sizes == {}  # an older node


def test_a_change_carries_its_callers_traceparent_only_when_there_is_one() -> None:
    traced = replace(CHANGE, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert Change.from_json(traced.to_json()) == traced
    assert "traceparent" not in json.loads(CHANGE.to_json())  # as the Lua script writes it
    with pytest.raises(WireError, match="traceparent"):
        Change.from_json({**json.loads(CHANGE.to_json()), "traceparent": 5})
