from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node.settings import NodeSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("MODELCACHE_"):
            monkeypatch.delenv(key)
    s = NodeSettings()
    assert (s.cache_size, s.load_retries, s.reconcile_interval_s, s.max_batch) == (3, 3, 5.0, 1000)
    assert s.admin_token == "" and s.redis_url is None and s.registry.is_absolute()
    assert s.resolved_node_id.endswith("-8000") and s.resolved_public_url == "http://127.0.0.1:8000"


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELCACHE_REGISTRY", str(tmp_path))
    monkeypatch.setenv("MODELCACHE_CACHE_SIZE", "7")
    monkeypatch.setenv("MODELCACHE_PINS", '{"churn": "1.0.0"}')
    monkeypatch.setenv("MODELCACHE_WARMUP", '["churn", "fraud"]')
    monkeypatch.setenv("MODELCACHE_NODE_ID", "n1")
    s = NodeSettings()
    assert s.registry == tmp_path and s.cache_size == 7 and s.node_id == "n1"
    assert s.pins == {"churn": "1.0.0"} and s.warmup == ["churn", "fraud"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MODELCACHE_CACHE_SIZE", "0"),
        ("MODELCACHE_MAX_BODY_BYTES", "10"),
        ("MODELCACHE_LOAD_RETRIES", "zero"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=key.removeprefix("MODELCACHE_").lower()):
        NodeSettings()
