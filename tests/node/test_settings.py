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


# -- `modelcache node` flags, generated from the fields -------------------------
def test_every_setting_is_a_flag_with_its_docstring_as_help() -> None:
    from node.__main__ import build_parser

    help_text = " ".join(build_parser().format_help().split())
    for name, field in NodeSettings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text, name
        assert field.description and " ".join(field.description.split()) in help_text, name
        assert f"MODELCACHE_{name.upper()}" in help_text, name


def test_flags_win_over_the_environment_and_json_fields_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.__main__ import settings_from

    monkeypatch.setenv("MODELCACHE_CACHE_SIZE", "5")
    monkeypatch.setenv("MODELCACHE_LOAD_RETRIES", "2")
    s = settings_from(
        ["--cache-size", "7", "--pins", '{"churn": "1.0.0"}', "--warmup-popular", "--log-format", "json"]
    )
    assert (s.cache_size, s.load_retries, s.pins, s.warmup_popular) == (7, 2, {"churn": "1.0.0"}, True)
    assert s.log_format == "json"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--cache-size", "0"], "cache_size: Input should be greater than or equal to 1"),
        (["--pins", "{oops"], "argument --pins: invalid JSON value"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_a_bad_flag_is_a_one_line_usage_error(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.__main__ import settings_from

    with pytest.raises(SystemExit) as exit_:
        settings_from(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and err.count("\n") == 1, err


def test_an_object_store_registry_stays_a_url() -> None:
    assert NodeSettings(registry="s3://models/prod").registry == "s3://models/prod"
    with pytest.raises(ValidationError, match="unsupported scheme"):
        NodeSettings(registry="ftp://models/prod")
