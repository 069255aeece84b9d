"""Errors over gRPC: the REST mapping's sentence, a gRPC status code in place of the HTTP status.

`node.http.common.map_error` stays the one mapping from an error to a status and
a sentence; this module only translates its HTTP status into a gRPC code, and
puts the machine-readable code (`not_found`, `bad_tensor`, ...) in the trailing
metadata `modelcache-error-code` (with `retry-after` for a 429), so a gRPC
client reads the same sentence and code a REST client does.
"""

from __future__ import annotations

import grpc

HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    # Too big a batch, too many on-demand loads: "some resource has been exhausted".
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
ERROR_CODE_KEY = "modelcache-error-code"


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status for an HTTP status the REST routes would answer (INTERNAL for anything else)."""
    return HTTP_TO_GRPC.get(http_status, grpc.StatusCode.INTERNAL)
