"""The refusals both front doors share: the FastAPI middleware (node.http.middleware) and the
prediction fast path (node.http.fast). Written once, as small pure functions each door calls.

- `refusal(headers, max_bytes)`: 413 on a `Content-Length` over the limit, 415 on a compressed
  body (parsed as garbage otherwise, and inflating it is a bomb waiting to happen);
- `read_bounded(receive, max_bytes)`: the body, read up to the limit (413 beyond it);
- `node_header(node_id)`: `X-Modelcache-Node`, on every answer, errors included;
- `INTERNAL`: the last-resort 500, with no internals (node.http.common.INTERNAL_ERROR).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from starlette.types import Receive

from node.http.common import INTERNAL_ERROR

__all__ = ["INTERNAL", "NODE_HEADER", "Refusal", "node_header", "read_bounded", "refusal", "too_large"]

NODE_HEADER = b"x-modelcache-node"


class Refusal(NamedTuple):
    """An answer given before the handler runs: status, machine code, message."""

    status: int
    code: str
    message: str


INTERNAL = Refusal(500, "internal_error", INTERNAL_ERROR)


def node_header(node_id: str) -> tuple[bytes, bytes]:
    return (NODE_HEADER, node_id.encode())


def too_large(max_bytes: int) -> Refusal:
    return Refusal(
        413,
        "body_too_large",
        f"request body exceeds {max_bytes} bytes (MODELCACHE_MAX_BODY_BYTES); send fewer rows per request",
    )


def refusal(headers: Mapping[bytes, bytes], max_bytes: int) -> Refusal | None:
    """What the request's headers alone refuse (lower-case names, as ASGI gives them), else None."""
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        return too_large(max_bytes)
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        return Refusal(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not accepted: "
            "send the body uncompressed",
        )
    return None


async def read_bounded(receive: Receive, max_bytes: int) -> bytes | Refusal | None:
    """The whole body, or a 413 as soon as it passes `max_bytes`; None if the client went away."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one message
        return body if len(body) <= max_bytes else too_large(max_bytes)
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
