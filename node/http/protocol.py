"""The node's HTTP/1.1 connection protocol: uvicorn's httptools protocol with a header deadline.

uvicorn arms no timer until a first response is sent, so a client that connects and
sends nothing, or trickles its headers a byte at a time (slowloris), holds a connection
and its memory for as long as it likes. Behind HAProxy that cannot happen (its
`timeout http-request` cuts such clients), but a node reached directly must survive
them too: every request's headers must arrive within `header_timeout_s` of its first
byte (or of the connection, for the first request), else the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded_protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class whose connections close when headers take too long."""

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_deadline is None:  # a further request on a kept-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_limits(header_timeout_s: float, max_connections: int) -> dict[str, Any]:
    """The keyword arguments of uvicorn.run that bound what one client can hold."""
    return {
        "http": guarded_protocol(header_timeout_s),
        # Beyond this many connections plus requests in progress uvicorn answers 503 at
        # once instead of queueing work without bound.
        "limit_concurrency": max_connections,
    }
