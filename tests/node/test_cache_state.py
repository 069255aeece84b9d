"""The warm-restart state file: written atomically, read like untrusted input (no server)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from node.cache_state import (
    MAX_BYTES,
    MAX_ENTRIES,
    CacheState,
    SavedEntry,
    StateFileError,
    read_state,
    state_path,
    write_state,
)

ENTRIES = [
    SavedEntry("churn", "1.2.0", uses=40, last_used=1000.0, resident_bytes=2048),
    SavedEntry("fraud", "2.0.0", uses=3, last_used=2000.0, resident_bytes=4096, default=False),
    SavedEntry("ltv", "0.1.0", uses=40, last_used=3000.0),
]


def test_round_trip_and_hottest_first(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cache-state-n1.json"
    write_state(path, CacheState("n1", 123.5, ENTRIES))
    state = read_state(path)
    assert state is not None and state.node_id == "n1" and state.saved_at == 123.5
    assert state.entries == ENTRIES and state.dropped == 0
    # uses first, then the most recent: ltv (40, t=3000), churn (40, t=1000), fraud (3)
    assert [e.model_type for e in state.hottest()] == ["ltv", "churn", "fraud"]


def test_write_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "cache-state-n1.json"
    write_state(path, CacheState("n1", 1.0, ENTRIES))
    write_state(path, CacheState("n1", 2.0, ENTRIES[:1]))
    assert os.listdir(tmp_path) == [path.name]
    state = read_state(path)
    assert state is not None and state.saved_at == 2.0 and len(state.entries) == 1


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache-state-n1.json"
    write_state(path, CacheState("n1", 1.0, ENTRIES))

    def no_space(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_state(path, CacheState("n1", 2.0, []))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [path.name]
    state = read_state(path)
    assert state is not None and state.saved_at == 1.0 and state.entries == ENTRIES


def test_no_file_is_no_state(tmp_path: Path) -> None:
    assert read_state(tmp_path / "absent.json") is None


def _doc(**changes: object) -> dict[str, object]:
    doc = json.loads(CacheState("n1", 1.0, ENTRIES).to_json())
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON"),
        (b"\x00\xff junk", "not JSON"),
        (json.dumps(_doc()).encode()[:-40], "not JSON"),  # truncated
        (b"[" * 100_000, "not JSON"),  # nesting deeper than the parser goes
        (b"[1, 2]", "not a modelcache-cache-state file"),
        (json.dumps(_doc(format="other")).encode(), "not a modelcache-cache-state file"),
        (json.dumps(_doc(version=2)).encode(), "format version 2"),
        (json.dumps(_doc(entries={"a": 1})).encode(), "`entries` must be a list"),
        (json.dumps(_doc(entries=[{}] * (MAX_ENTRIES + 1))).encode(), "`entries` must be a list"),
        (json.dumps(_doc(saved_at="yesterday")).encode(), "`saved_at` a number"),
        (b" " * (MAX_BYTES + 1), f"larger than {MAX_BYTES} bytes"),
    ],
)
def test_an_unusable_file_is_refused_with_its_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "cache-state-n1.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError) as caught:
        read_state(path)
    assert reason in caught.value.reason and str(path) in str(caught.value)


def test_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state(fifo)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state(tmp_path / "dir.json")


def test_a_fifo_swapped_in_after_the_check_does_not_block_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: a regular file when checked, a FIFO when opened (an operator's `mkfifo`, a
    # misbehaving sidecar). The node's start must not wait for a writer that never comes.
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    real = os.stat

    def regular_at_first(path: object, *args: object, **kw: object) -> os.stat_result:
        found = real(path, *args, **kw)  # type: ignore[arg-type]
        if str(path) == str(fifo):
            return os.stat_result((stat.S_IFREG | 0o644, *tuple(found)[1:]))
        return found

    monkeypatch.setattr(os, "stat", regular_at_first)
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(_try(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the stuck open so the thread ends
        with open(fifo, "wb"):
            pass
        reader.join(5)
        pytest.fail("read_state blocked opening a FIFO")
    assert isinstance(outcome[0], StateFileError) and "not a regular file" in outcome[0].reason


def _try(path: Path) -> object:
    try:
        return read_state(path)
    except StateFileError as exc:
        return exc


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache-state-n1.json"
    write_state(path, CacheState("n1", 1.0, ENTRIES))
    path.chmod(0)
    with pytest.raises(StateFileError, match="unreadable"):
        read_state(path)


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"model_type": "../etc", "version": "1.0.0", "uses": 3},
        {"model_type": "churn", "version": "not-a-version", "uses": 3},
        {"model_type": "churn", "version": "1.0.0", "uses": 0},
        {"model_type": "churn", "version": "1.0.0", "uses": True},
        {"model_type": "churn", "version": "1.0.0", "uses": 2.5},
        {"model_type": "churn", "version": "1.0.0", "uses": 3, "resident_bytes": -1},
        {"model_type": "churn", "version": "1.0.0", "uses": 3, "last_used": "noon"},
        {"model_type": "churn", "version": "1.0.0", "uses": 3, "default": "yes"},
        {"model_type": 7, "version": "1.0.0", "uses": 3},
    ],
)
def test_a_malformed_entry_is_dropped_and_the_others_kept(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "cache-state-n1.json"
    doc = _doc()
    doc["entries"] = [bad, *doc["entries"]]  # type: ignore[misc]
    path.write_text(json.dumps(doc))
    state = read_state(path)
    assert state is not None and state.dropped == 1 and state.entries == ENTRIES


def test_versions_are_read_normalised() -> None:
    entry = SavedEntry.from_json({"model_type": "churn", "version": "2.0.0-beta", "uses": 1})
    assert entry.version == "2.0.0b0" and entry.default is True


def test_the_file_name_is_safe_for_any_node_id(tmp_path: Path) -> None:
    assert state_path(tmp_path, "node-8001") == tmp_path / "cache-state-node-8001.json"
    odd = state_path(tmp_path, "../../etc/passwd")
    assert odd.parent == tmp_path and "/" not in odd.name and odd.name.startswith("cache-state-")
