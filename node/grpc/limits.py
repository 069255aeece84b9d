"""The gRPC door's bounds, derived from the settings that bound the REST door.

REST (node.http.protocol) refuses work beyond `MAX_CONNECTIONS` and drops a
client whose headers take longer than `HEADER_TIMEOUT_S`; gRPC gets the same,
in gRPC's own terms (grpc core channel arguments, one server per node):

- calls in progress: `maximum_concurrent_rpcs` (GRPC_MAX_CONCURRENT_RPCS, default
  MAX_CONNECTIONS); one more is answered RESOURCE_EXHAUSTED at once, a slow client's
  unfinished call counting as in progress;
- calls per connection: `grpc.max_concurrent_streams` (100), so one connection cannot
  take every slot (that client's further calls wait on its own side, as HTTP/2 says);
- connections: `grpc.max_allowed_incoming_connections` (MAX_CONNECTIONS); one more is
  closed at once (the client sees UNAVAILABLE);
- connection set-up: `grpc.server_handshake_timeout_ms` (HEADER_TIMEOUT_S), so a client
  that connects and stays silent is dropped;
- idle connections: `grpc.max_connection_idle_ms` (KEEP_ALIVE_S), closed with a GOAWAY
  (clients reconnect by themselves);
- dead peers: `grpc.keepalive_time_ms`/`_timeout_ms`: a connection whose peer stops
  answering pings (a frozen client) is closed, its calls cancelled;
- message size: `grpc.max_receive_message_length` (MAX_BODY_BYTES).

A slow or idle client therefore holds at most its own connection and the calls
it started, for a bounded time; the others keep being served.
"""

from __future__ import annotations

from typing import Any

from node.settings import NodeSettings

STREAMS_PER_CONNECTION = 100
"""Calls in progress on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; RFC 9113's minimum)."""
KEEPALIVE_S = 60.0
"""Ping a connection after this long without traffic, to find peers that stopped answering."""
KEEPALIVE_TIMEOUT_S = 10.0
"""A ping unanswered this long closes the connection (and cancels its calls)."""


def max_concurrent_rpcs(settings: NodeSettings) -> int:
    """Calls in progress before RESOURCE_EXHAUSTED: GRPC_MAX_CONCURRENT_RPCS, else MAX_CONNECTIONS."""
    return settings.grpc_max_concurrent_rpcs or settings.max_connections


def server_options(settings: NodeSettings) -> list[tuple[str, Any]]:
    """The grpc core channel arguments that bound connections, streams, messages and idle time."""
    rpcs = max_concurrent_rpcs(settings)
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_concurrent_streams", min(STREAMS_PER_CONNECTION, rpcs)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.server_handshake_timeout_ms", _ms(settings.header_timeout_s)),
        ("grpc.max_connection_idle_ms", _ms(settings.keep_alive_s)),
        ("grpc.keepalive_time_ms", _ms(KEEPALIVE_S)),
        ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_S)),
        ("grpc.so_reuseport", 0),  # a busy port is an error, never a second listener
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
