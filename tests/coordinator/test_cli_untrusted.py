"""The command line against answers it must not trust: a 200 of the wrong shape, a server that
trickles bytes, a malformed Redis URL with a password in it. Real servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coordinator import client as client_module
from coordinator.cli import main
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modelcache"]
SECRET = "s3cret-pw-do-not-print"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def serve(answer: bytes) -> tuple[ThreadingHTTPServer, str]:
    """A tiny HTTP server that answers every request 200 with `answer` as JSON."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        # A waited pin whose answer has no acknowledgements proves nothing: never exit 0.
        (["pin", "churn", "1.0.0", "--wait"], {"ok": True, "change": {"seq": 3}}),
        (["pin", "churn", "1.0.0"], {"hello": "world"}),
        (["unpin", "churn", "--wait"], {"ok": True, "change": {"seq": 3}, "acks": [{"node_id": "a"}]}),
        (["reload", "--wait"], {"ok": True, "change": {"seq": "3"}, "acks": []}),
        (["status"], {"nodes": "many"}),
        (["status"], [1, 2, 3]),
        (["models"], {"models": [{"name": "churn"}]}),
        (["models"], {"models": [{"model_type": "churn", "versions": 3}]}),
        (["canary", "--list"], {"canaries": {"churn": {"version": "1.1.0"}}}),
    ],
)
def test_a_wrong_shaped_answer_is_a_failure_never_a_success(command: list[str], answer: object) -> None:
    server, url = serve(json.dumps(answer).encode())
    try:
        for extra in (["--json"], []):
            proc = cli("--url", url, "--token", "t", *command, *extra)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr
            assert "not the admin API's" in proc.stderr and proc.stderr.count("\n") == 1
            if extra:
                doc = json.loads(proc.stdout)  # one JSON document, saying it failed
                assert doc["ok"] is False and doc["exit_code"] == 1 and "not the admin API's" in doc["error"]
            else:
                assert proc.stdout == ""
    finally:
        server.shutdown()
        server.server_close()


class Trickler:
    """Accepts one connection and sends an HTTP answer one byte at a time, `interval_s` apart,
    for at most `for_s` seconds (the test's bound); `headers_first` sends the head at once."""

    def __init__(self, headers_first: bool, interval_s: float = 0.1, for_s: float = 30.0) -> None:
        self.headers_first, self.interval_s, self.for_s = headers_first, interval_s, for_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        body = b'{"nodes": [], "seq": 0, "pins": {}, "padding": "' + b"x" * 100_000
        stop = time.monotonic() + self.for_s
        try:
            if self.headers_first:
                conn.sendall(head)
                data = body
            else:
                data = head + body
            for i in range(len(data)):
                if time.monotonic() > stop:
                    break
                conn.sendall(data[i : i + 1])
                time.sleep(self.interval_s)
        except OSError:
            pass  # the client gave up and closed: what the test wants
        finally:
            conn.close()
            self.listener.close()
            self.done.set()

    def finished_sending(self) -> bool:
        return self.done.is_set()


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(client_module, "READ_TIMEOUT_S", 1.0)
    yield 1.0


@pytest.mark.parametrize("headers_first", [True, False], ids=["trickled-body", "trickled-head"])
def test_a_trickling_server_cannot_hold_the_cli_past_its_deadline(
    headers_first: bool, short_deadline: float, capsys: pytest.CaptureFixture[str]
) -> None:
    trickler = Trickler(headers_first)
    code = main(["--url", trickler.url, "status", "--json"])
    # Each byte comes well within httpx's per-read timeout, so only an overall deadline ends the
    # call; the server had far more to send when the command gave up.
    assert not trickler.finished_sending()
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and "did not answer within 1s; outcome unknown" in doc["error"]


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"http://:{SECRET}@127.0.0.1/0",
        f"redis+sentinel://:{SECRET}@127.0.0.1:x/mymaster/0",
        f"redis+sentinel://:{SECRET}@127.0.0.1:26379/mymaster/zero?sentinel_password={SECRET}",
    ],
)
def test_a_malformed_redis_url_is_a_usage_error_that_never_shows_the_password(url: str) -> None:
    proc = cli("status", "--json", "--redis-url", url)
    assert proc.returncode == 2, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "Redis URL" in doc["error"] and "***" in doc["error"]
    # The node refuses it the same way: one line, exit 2, no password in its log.
    node = subprocess.run(
        [sys.executable, "-P", "-m", "node", "--port", str(free_port()), "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert node.returncode == 2 and SECRET not in node.stdout + node.stderr
    assert "Redis URL" in node.stderr and "Traceback" not in node.stderr


def test_an_unreachable_redis_is_named_without_its_password() -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0"
    proc = cli("status", "--json", "--redis-url", url)
    assert proc.returncode == 3 and SECRET not in proc.stdout + proc.stderr
    assert "Redis at 127.0.0.1" in json.loads(proc.stdout)["error"]


def test_a_password_in_the_admin_url_or_a_token_never_reaches_the_output() -> None:
    port = free_port()  # nobody listens: the message names the URL it could not reach
    at = f"http://admin:{SECRET}@127.0.0.1:{port}/?token={SECRET}"
    proc = cli("--url", at, "--token", SECRET, "status")
    assert proc.returncode == 3 and SECRET not in proc.stdout + proc.stderr
    assert f"http://admin:***@127.0.0.1:{port}" in proc.stderr
    server, url = serve(b'{"nodes": "many"}')
    try:
        wrong = cli("--url", url.replace("http://", f"http://admin:{SECRET}@"), "--token", SECRET, "status")
    finally:
        server.shutdown()
        server.server_close()
    assert wrong.returncode == 1 and SECRET not in wrong.stdout + wrong.stderr
