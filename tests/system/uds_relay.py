"""A byte relay from Unix sockets to TCP addresses, run inside a test's network namespace.

A Unix socket is a file, and files cross network namespaces: the test process (in the
root namespace) speaks HTTP over `<dir>/<name>.sock`, and this relay, started with
`ip netns exec <client namespace>`, forwards each connection to an address that exists
only inside the test's namespaces. The test's traffic never leaves them, and the root
namespace gets no address or route.

    python -m tests.system.uds_relay --max-seconds 300 /tmp/x/lb.sock=10.77.0.3:8080 ...

Prints `ready` once every socket listens; exits after --max-seconds whatever happens,
so a relay whose test died does not outlive it by much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable

CONNECT_TIMEOUT_S = 5.0
CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # One side ended: close the other, which also ends the opposite pump (its reader gets EOF).
        with contextlib.suppress(Exception):
            writer.close()


def _handler(host: str, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
            )
        except OSError:  # TimeoutError included
            client_w.close()  # the test sees a closed connection, as from a refused one
            return
        await asyncio.gather(_pump(client_r, upstream_w), _pump(upstream_r, client_w))

    return handle


def _parse(mapping: str) -> tuple[str, str, int]:
    path, _, address = mapping.partition("=")
    host, _, port = address.rpartition(":")
    if not path or not host or not port.isdigit():
        raise SystemExit(f"expected PATH=HOST:PORT, got {mapping!r}")
    return path, host, int(port)


async def _serve(mappings: list[tuple[str, str, int]], max_seconds: float) -> None:
    servers = []
    for path, host, port in mappings:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(_handler(host, port), path=path))
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), max_seconds)
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("mappings", nargs="+", metavar="PATH=HOST:PORT")
    args = parser.parse_args(argv)
    asyncio.run(_serve([_parse(m) for m in args.mappings], args.max_seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
