from __future__ import annotations

from coordinator.keys import Keys


def test_every_key_carries_the_prefix() -> None:
    keys = Keys("blue:")
    names = [
        keys.pins,
        keys.generations,
        keys.changes,
        keys.seq,
        keys.epoch,
        keys.events,
        keys.popularity,
        keys.node("n1"),
        keys.ack("n1"),
        keys.node_pattern,
    ]
    assert all(n.startswith("blue:") for n in names)
    assert len(set(names)) == len(names)
    assert Keys().pins == "modelcache:pins"
