"""Logging of a node process: one format for the node's own loggers and uvicorn's.

`MODELCACHE_LOG_FORMAT=text` (default) writes readable lines; `json` writes one JSON
object per line with `time` (ISO 8601 UTC), `level`, `node_id`, `logger`, `message`,
the fields passed with `extra=`, `request_id` while one is bound, and `exception`
(the formatted traceback as one string) when there is one.

`log_config()` returns the dictConfig that `python -m node` applies and hands to
uvicorn as `log_config=`, so uvicorn's loggers use the same handler and formatter.

For the HTTP layer: log each request to `ACCESS_LOGGER` with its fields as `extra=`
(`node.http.observe` does: `extra={"method", "route", "status", "duration_ms", ...}`)
and bind the request id for the duration of a request with `bind_request_id()` /
`reset_request_id()`: every line logged meanwhile carries it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "modelcache.access"
"""Logger name of the per-request access log (the HTTP layer writes it)."""

LOG_FORMATS = ("text", "json")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelcache_request_id", default=None
)

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# uvicorn passes these through `extra=` for its own formatters; they are noise in ours.
_IGNORED = frozenset({"color_message"})


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Attach `request_id` to every log line of the current context (task, thread) until reset."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in _IGNORED}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that JSON cannot carry become their `str()`."""

    def __init__(self, node_id: str = "") -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname.lower(),
            "node_id": self.node_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            doc["request_id"] = request_id
        for key, value in _extra(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<time> <node> <logger> <LEVEL> <message> key=value ...`, traceback on the following lines."""

    def __init__(self, node_id: str = "") -> None:
        super().__init__("%(asctime)s " + (node_id or "-") + " %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _extra(record)
        request_id = _request_id.get()
        if request_id is not None:
            fields = {"request_id": request_id, **fields}
        if not fields:
            return line
        head, sep, tail = line.partition("\n")
        return head + "".join(f" {k}={v}" for k, v in fields.items()) + sep + tail


def log_config(log_format: str = "text", level: str = "info", node_id: str = "") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the node and uvicorn: one handler (stderr), one format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    level = level.upper()
    # uvicorn's loggers do not propagate: each one gets our handler.
    own = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter, "node_id": node_id}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {"uvicorn": own, "uvicorn.error": own, "uvicorn.access": own},
    }


def configure(log_format: str = "text", level: str = "info", node_id: str = "") -> dict[str, Any]:
    """Apply `log_config(...)` to this process and return it (for uvicorn's `log_config=`)."""
    config = log_config(log_format, level, node_id)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # a warning is a log line too, in the same format
    return config
