"""The resolver: pins, the memoised default, failure TTL and fallback order (no loading)."""

from __future__ import annotations

from coordinator.registry import Registry
from node.metrics import NodeMetrics
from node.resolver import Resolver
from tests.helpers import PublishFn


def make(registry: Registry, now: list[float], **kw) -> Resolver:
    return Resolver(registry, NodeMetrics(), clock=lambda: now[0], **kw)


def test_default_is_pin_else_latest_stable_memoised(registry: Registry, publish: PublishFn) -> None:
    for v in ("1.0", "1.1", "2.0b1"):
        publish("m", v)
    r = make(registry, [0.0])
    assert r.default_version("m") == "1.1"  # the pre-release is not "latest"
    publish("m", "1.2")
    assert r.default_version("m") == "1.1"  # memoised until the service switches it
    assert r.target("m") == "1.2"
    assert r.set_pin("m", "2.0-beta1") is True and r.target("m") == "2.0b1"
    assert r.set_pin("m", "2.0b1") is False  # unchanged
    assert r.is_default_or_pinned(("m", "2.0b1")) and not r.is_default_or_pinned(("m", "1.0"))
    assert r.set_pin("m", None) is True and r.pins == {}


def test_failure_ttl_on_an_injected_clock(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    now = [100.0]
    r = make(registry, now, failure_ttl_s=30)
    r.mark_failed(("m", "1.0"), "checksum")
    assert r.recently_failed(("m", "1.0")) and r.failure(("m", "1.0")) == "checksum"
    now[0] = 129.0
    assert r.recently_failed(("m", "1.0"))
    now[0] = 131.0
    assert not r.recently_failed(("m", "1.0"))


def test_fallback_candidates_are_lower_stable_versions_not_recently_failed(
    registry: Registry, publish: PublishFn
) -> None:
    for v in ("0.9", "1.0", "1.1b1", "1.10", "1.2"):
        publish("m", v)
    r = make(registry, [0.0])
    assert r.fallback_candidates("m", "1.10") == ["1.2", "1.0", "0.9"]  # by version, not string
    r.mark_failed(("m", "1.2"), "corrupt")
    assert r.fallback_candidates("m", "1.10") == ["1.0", "0.9"]


def test_target_rereads_a_cached_listing(registry: Registry, publish: PublishFn) -> None:
    """Reloads and pin changes resolve through `target`: an object store's cached listing is re-read."""

    refreshed: list[str | None] = []

    class Recording(Registry):
        def refresh(self, model_type: str | None = None) -> None:
            refreshed.append(model_type)

    publish("m", "1.0")
    recording = Recording(registry.root)
    r = make(recording, [0.0])
    assert r.target("m") == "1.0" and refreshed == ["m"]
    r.set_pin("m", "1.0")
    assert r.target("m") == "1.0" and refreshed == ["m"]  # a pin names the version itself
