"""What every HTTP route shares: the error shape and status map, and bounded body parsing.

Every error a client sees is `{"error": <sentence>, "code": <machine code>}`;
status codes live here and only here (`ERROR_STATUS`), never in the error
classes. `map_error` is the one mapping: FastAPI's exception handlers and the
fast path (`node.http.fast`) both call it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.errors import (
    ClusterStateCorrupt,
    ClusterUnavailable,
    InvalidName,
    ModelCacheError,
    ModelNotFound,
    RegistryError,
)
from node.errors import (
    BatchTooLarge,
    ChecksumMismatch,
    InvalidInput,
    ModelLoadError,
    ModelTooLarge,
    NotReady,
    Throttled,
)
from node.tensors import TensorError

log = logging.getLogger("modelcache.api")

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
T = TypeVar("T")

# Bodies above this are parsed and validated in a worker thread: a 1 MB batch costs
# tens of ms of parsing, which on the event loop would stall every other request.
OFFLOAD_BYTES = 64 * 1024


class FastJSON(JSONResponse):
    """JSON rendered by orjson: the prediction path's serialisation is a visible share of its cost."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class AdminError(ModelCacheError):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


class NotAvailable(ModelCacheError):
    code = "not_implemented"


class UnsupportedMediaType(ModelCacheError):
    code = "unsupported_media_type"


ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (TensorError, 400),
    (InvalidName, 422),
    (ModelNotFound, 404),
    (InvalidInput, 422),
    (BatchTooLarge, 413),
    (UnsupportedMediaType, 415),
    (Throttled, 429),
    (ModelTooLarge, 507),  # not a 503: retrying (or another node of the same budget) cannot help
    (ModelLoadError, 503),
    (RegistryError, 503),
    (NotReady, 503),
    (ClusterUnavailable, 503),
    (ClusterStateCorrupt, 503),
    (NotAvailable, 501),
]
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
INTERNAL_ERROR = "internal error: the node logged the details; retry, and report it if it persists"


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": message, "code": code})


def error_response(status: int, code: str, message: str, **headers: str) -> FastJSON:
    return FastJSON({"error": message, "code": code}, status_code=status, headers=headers)


# -- keeping server internals out of client messages --------------------------
_PATH = re.compile(r"""(?<![\w.:])(?:[A-Za-z]:)?[/\\](?:[^\s'"():,;]+)""")
_DIGEST = re.compile(r"\b[0-9a-f]{12,}…?")


def scrub(message: str, roots: Iterable[str] = ()) -> str:
    """`message` without filesystem paths or hex digests (the log line keeps them)."""
    for root in roots:
        if root and root != "/":
            message = message.replace(root, "<registry>")
    return _DIGEST.sub("<digest>", _PATH.sub("<path>", message))


def client_message(exc: ModelCacheError, registry_root: Path) -> str:
    """What the client reads for a known error: the model/version and a reason, no internals."""
    if isinstance(exc, ChecksumMismatch):
        return (
            f"could not load {exc.model_type} {exc.version}: its artifact does not match the sha256 in "
            "its metadata (corrupt or altered); republish it"
        )
    if isinstance(exc, ModelLoadError):
        return f"could not load {exc.model_type} {exc.version}: {scrub(exc.detail, [str(registry_root)])}"
    if isinstance(exc, RegistryError):
        # Its message names the model and version only; scrub in case a reason quoted a path.
        return f"{scrub(str(exc), [str(registry_root)])}; fix or republish that version"
    return str(exc).replace(str(registry_root), "<registry>")


def map_error(
    exc: ModelCacheError, registry_root: Path, method: str, path: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A known error as (status, `{"error", "code"}` body, extra headers)."""
    if isinstance(exc, AdminError):
        extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return exc.status, {"error": str(exc), "code": exc.code}, extra
    status = next((s for cls, s in ERROR_STATUS if isinstance(exc, cls)), 500)
    message = client_message(exc, registry_root)
    if status >= 500:
        # The detail (paths, digests, library messages) goes to the log, not to the client.
        log.warning("%s %s -> %d %s: %s", method, path, status, exc.code, exc)
    extra = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Throttled) else {}
    return status, {"error": message, "code": exc.code}, extra


def install_error_handlers(app: FastAPI, registry_root: Path) -> None:
    """Map every error class to its status, in the documented shape."""

    @app.exception_handler(ModelCacheError)
    async def _known(request: Request, exc: ModelCacheError) -> Response:
        status, body, extra = map_error(exc, registry_root, request.method, request.url.path)
        return FastJSON(body, status_code=status, headers=extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_input", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path[:200]}; see /docs for the API"
        elif exc.status_code == 405:
            message = (
                f"{request.method} is not allowed here; allowed: {(exc.headers or {}).get('Allow', '?')}"
            )
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, code, message, **(exc.headers or {}))


def describe_validation(errors: Iterable[Any]) -> str:
    """One readable sentence from pydantic's error list."""
    errors = list(errors)
    # A union (list or map) reports a failure per branch; keep the branch the input took.
    shape_errors = {"dict_type", "list_type"}
    specific = [e for e in errors if e.get("type") not in shape_errors] or errors
    parts = []
    for err in specific[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_type_tag(p)]
        msg = err.get("msg", "invalid")
        if err.get("type") in ("float_type", "float_parsing", "float_finite_number"):
            msg = "must be a number or null"
        parts.append(f"{'.'.join(loc)[:100] or 'body'}: {msg}")
    return "invalid request: " + "; ".join(parts)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("list", "dict"))


def refused_input(label: str, exc: Exception) -> InvalidInput:
    """A model's own refusal of the input (ValueError/TypeError at predict time) as a 422.

    An estimator without NaN support raises ValueError for a null feature: the
    client's input, not a server fault.
    """
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    hint = " (null marks a missing value, which this model cannot take)" if "NaN" in first else ""
    return InvalidInput(f"{label} cannot predict this input: {scrub(first)}{hint}")


async def off_loop_if_big(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` in a worker thread when it works on a body over OFFLOAD_BYTES, else inline."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


# -- bodies -----------------------------------------------------------------
def require_json(content_type: str | None) -> None:
    """Refuse a body that says it is something other than JSON (absent means JSON)."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type {media[:60]!r} is not JSON: send application/json")


def json_document(raw: bytes) -> Any:
    """orjson: refuses NaN/Infinity literals, numbers beyond a double, nesting over 1024 levels."""
    if not raw.strip():
        raise InvalidInput("request body is empty: send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


# A JSON string, escapes included (unrolled: no backtracking per character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def rows_in_batch(raw: bytes) -> int:
    """The rows of a batch body (`{"instances": [row, ...], ...}`) counted on its bytes, unparsed.

    In a valid body every array or object but the outer object and `instances` is one row
    (rows hold scalars; the other fields are strings), so this is exact for one, and at
    least the row count for any other. Brackets inside strings are not counted: strings
    are blanked first, and only when the plain count says the body may be over a limit.
    Costs a few byte scans in C, against a parse that builds every row's objects.
    """
    containers = raw.count(b"[") + raw.count(b"{")
    if containers and b'"' in raw:
        blanked = _JSON_STRING.sub(b'""', raw)
        containers = blanked.count(b"[") + blanked.count(b"{")
    return max(containers - 2, 0)


def refuse_big_batch(raw: bytes, max_rows: int) -> None:
    """BatchTooLarge before any parsing when the body's bytes already show too many rows."""
    # Cheap upper bound first: brackets in strings only add to the plain count.
    if raw.count(b"[") + raw.count(b"{") - 2 <= max_rows:
        return
    rows = rows_in_batch(raw)
    if rows > max_rows:
        raise BatchTooLarge(rows, max_rows)


def decode_body(raw: bytes, model: type[M], max_rows: int | None = None) -> M:
    """Parse and validate; an over-limit batch is refused on its row count, before validation."""
    if max_rows is not None:
        refuse_big_batch(raw, max_rows)
    doc = json_document(raw)
    if max_rows is not None and isinstance(doc, dict):
        rows = doc.get("instances")
        if isinstance(rows, list) and len(rows) > max_rows:
            raise BatchTooLarge(len(rows), max_rows)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(describe_validation(exc.errors())) from None


async def read_body(request: Request, model: type[M], max_rows: int | None = None) -> M:
    """The request's JSON body as `model`; big bodies are decoded off the event loop."""
    require_json(request.headers.get("content-type"))
    return await parse_body(await request.body(), model, max_rows)


async def parse_body(raw: bytes, model: type[M], max_rows: int | None = None) -> M:
    """`decode_body`, in a worker thread when the body is big (an over-limit batch is refused
    here first, on the event loop: counting its rows costs less than handing it to a thread)."""
    if max_rows is not None:
        refuse_big_batch(raw, max_rows)
    return await off_loop_if_big(len(raw), decode_body, raw, model, max_rows)


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that reads its body with `read_body`."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def add_schemas(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Put the bodies `body_doc` refers to into the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
