"""Slow clients reaching a node directly: headers have a deadline, connections a bound."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import httpx

from coordinator.registry import Registry
from tests.helpers import NodeProcess, PublishFn

ROW = {"model_type": "m", "features": [0.1, 0.2, 0.3, 0.4]}


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(0.2)
    return sock


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and a Content-Length body) read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_header_clients_are_disconnected_and_others_are_served(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("m", "1.0")
    node = node_process(registry.root, MODELCACHE_HEADER_TIMEOUT_S="1")
    silent = [_connect(node.port) for _ in range(5)]  # connect, never send a byte
    trickling = [_connect(node.port) for _ in range(5)]
    for sock in trickling:
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: n\r\n")
    open_socks = silent + trickling
    deadline = time.monotonic() + 20  # a bound for the test, far above the 1 s header deadline
    while open_socks and time.monotonic() < deadline:
        for sock in trickling:
            if sock in open_socks:
                with contextlib.suppress(OSError):  # a byte at a time, as a slowloris does
                    sock.sendall(b"X")
        open_socks = [s for s in open_socks if not _closed_by_server(s)]
        assert httpx.post(f"{node.url}/api/v1/predict", json=ROW, timeout=10).status_code == 200
    for sock in silent + trickling:
        sock.close()
    assert not open_socks, f"{len(open_socks)} slow connections still held after 20 s"


def test_a_kept_alive_connection_serves_request_after_request(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    """The deadline is per request's headers, not per connection: an idle keep-alive gap is fine."""
    publish("m", "1.0")
    node = node_process(registry.root, MODELCACHE_HEADER_TIMEOUT_S="1")
    body = b'{"model_type": "m", "features": [0.1, 0.2, 0.3, 0.4]}'
    request = (
        b"POST /api/v1/predict HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            assert _response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # idle longer than the header deadline, shorter than keep-alive
