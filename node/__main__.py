"""`python -m node` (and `modelcache node`): run one node in one uvicorn process."""

from __future__ import annotations

import os

# Before XGBoost (imported by main()) starts its OpenMP runtime: one thread per process.
# True because `import node` imports nothing heavy (see node/__init__.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from node.settings import NodeSettings

EXAMPLE = """example:
  modelcache node --port 8001 --registry ./registry --redis-url redis://127.0.0.1:6379/0

Every flag can also be set as an environment variable (shown in each help line);
a flag wins over its variable."""


def _is_json(annotation: Any) -> bool:
    """dict and list settings are given as JSON, as in their environment variables."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return typing.get_origin(annotation) in (dict, list) or annotation in (dict, list)


def _json(text: str) -> Any:
    return json.loads(text)


_json.__name__ = "JSON"  # argparse names the type in its error: "invalid JSON value: ..."


def _add_flag(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    flag = "--" + name.replace("_", "-")
    env = f"MODELCACHE_{name.upper()}"
    default = field.get_default(call_default_factory=True)
    if default in (None, ""):
        shown = "unset"
    else:
        shown = json.dumps(default) if _is_json(field.annotation) else default
    help_text = f"{field.description or name} [{env}; default {shown}]".replace("%", "%%")
    if field.annotation is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    literal = typing.get_origin(field.annotation) is typing.Literal
    choices = typing.get_args(field.annotation) if literal else None
    parser.add_argument(
        flag,
        type=_json if _is_json(field.annotation) else str,
        choices=choices,
        metavar="JSON" if _is_json(field.annotation) else None if choices else name.upper(),
        default=None,
        help=help_text,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line on stderr, exit 2 (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """One flag per `NodeSettings` field, its help the field's docstring."""
    parser = _Parser(
        prog="modelcache node",
        usage="%(prog)s [OPTIONS]",
        description="Run one inference node (one uvicorn process).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in NodeSettings.model_fields.items():
        _add_flag(parser, name, field)
    return parser


def settings_from(argv: Sequence[str] | None) -> NodeSettings:
    """Flags over environment over defaults; a bad value is a usage error (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return NodeSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        parser.error(problems)
        raise  # pragma: no cover - parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv)

    import uvicorn

    from node.app import build_app
    from node.http.protocol import uvicorn_limits
    from node.logs import configure
    from node.otel import TracingUnavailable

    config = configure(settings.log_format, settings.log_level, settings.resolved_node_id)
    try:
        app = build_app(settings, freeze_heap=True)
    except TracingUnavailable as exc:  # the otel extra missing, an OTEL_* value we cannot use
        print(f"modelcache node: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=config,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=10,
        **uvicorn_limits(settings.header_timeout_s, settings.max_connections),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
