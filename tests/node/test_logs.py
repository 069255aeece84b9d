"""Node logs: one format (text or JSON lines) for the node's loggers and uvicorn's."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from coordinator.registry import Registry
from node.logs import (
    ACCESS_LOGGER,
    JsonFormatter,
    TextFormatter,
    bind_request_id,
    log_config,
    reset_request_id,
)
from tests.helpers import NodeProcess, PublishFn, corrupt

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _record(msg: str = "loaded %s", *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    level = logging.WARNING
    record = logging.LogRecord("modelcache.cache", level, __file__, 1, msg, args or ("m",), exc_info)
    record.__dict__.update(extra)
    return record


def test_json_line_carries_time_level_node_logger_message_and_extra_fields() -> None:
    doc = json.loads(JsonFormatter("n1").format(_record(model_type="churn", ms=1.5)))
    assert ISO_UTC.match(doc.pop("time"))
    assert doc == {
        "level": "warning",
        "node_id": "n1",
        "logger": "modelcache.cache",
        "message": "loaded m",
        "model_type": "churn",
        "ms": 1.5,
    }


def test_json_exception_is_one_string_field_and_the_line_stays_one_line() -> None:
    line = JsonFormatter("n1").format(_record(exc=True, obj=object()))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["exception"].startswith("Traceback") and "ValueError: boom" in doc["exception"]
    assert doc["obj"].startswith("<object object")  # not JSON-serialisable: its str()


def test_bound_request_id_is_on_every_line_until_reset() -> None:
    token = bind_request_id("req-42")
    try:
        assert json.loads(JsonFormatter().format(_record()))["request_id"] == "req-42"
        assert "request_id=req-42" in TextFormatter("n1").format(_record())
    finally:
        reset_request_id(token)
    assert "request_id" not in json.loads(JsonFormatter().format(_record()))


def test_text_line_names_node_logger_level_and_extra_fields() -> None:
    line = TextFormatter("n1").format(_record(model_type="churn"))
    assert re.match(r"^\S+ \S+ n1 modelcache\.cache WARNING loaded m model_type=churn$", line), line


def test_log_config_routes_uvicorn_and_access_loggers_through_one_handler() -> None:
    config = log_config("json", "debug", "n1")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name]["handlers"] == ["default"]
    assert config["formatters"]["default"]["()"] is JsonFormatter
    assert ACCESS_LOGGER.startswith("modelcache.")  # under the root handler, no own config needed


def _lines_of(node: NodeProcess) -> list[str]:
    node.stop()
    return [ln for ln in node.log.read_text().splitlines() if ln.strip()]


def test_a_real_node_logs_only_json_lines(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    corrupt(registry, publish("m", "1.0"))
    node = node_process(registry.root, MODELCACHE_LOG_FORMAT="json", MODELCACHE_LOAD_RETRIES="1")
    r = httpx.post(f"{node.url}/api/v1/predict", json={"model_type": "m", "features": [0, 0, 0, 0]})
    assert r.status_code == 503  # the failed load is logged
    lines = _lines_of(node)
    docs = [json.loads(line) for line in lines]  # every line, uvicorn's included
    assert all(ISO_UTC.match(d["time"]) and d["node_id"] == f"node-{node.port}" for d in docs)
    loggers = {d["logger"] for d in docs}
    assert "uvicorn.error" in loggers and any(n.startswith("modelcache.") for n in loggers), loggers
    assert any(d["level"] in ("warning", "error") and "m" in d["message"] for d in docs)
    assert any("Application startup complete" in d["message"] for d in docs)


def test_a_real_node_in_text_mode_writes_uvicorn_lines_in_the_node_format(
    node_process: Callable[..., NodeProcess], registry: Registry
) -> None:
    node = node_process(registry.root)
    lines = _lines_of(node)
    pattern = re.compile(rf"^\S+ \S+ node-{node.port} (uvicorn\.error|modelcache\.\S+) [A-Z]+ ")
    assert lines and all(pattern.match(line) for line in lines), lines
    assert any(" uvicorn.error INFO Application startup complete" in line for line in lines), lines


def test_importing_the_package_loads_no_xgboost() -> None:
    """node/__main__.py sets OMP_NUM_THREADS after `import node`: that import must stay light."""
    code = (
        "import sys, node\n"
        "assert 'xgboost' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n"
        "import node.__main__\n"
        "assert 'xgboost' not in sys.modules\n"
        "from node import ModelCache, NodeSettings\n"
        "assert set(node.__all__) <= set(dir(node)) and ModelCache.__module__ == 'node.cache'\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
