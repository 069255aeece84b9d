"""A real S3-compatible server process (moto's server mode) and a throttling TCP proxy for faults.

Tests and the store benchmark speak to the server over HTTP with boto3 exactly as a
node would to MinIO or AWS: only the endpoint differs (`AWS_ENDPOINT_URL`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from coordinator.processes import free_port, stop_process

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "modelcache-test",
    "AWS_SECRET_ACCESS_KEY": "modelcache-test-secret",
    "AWS_REGION": "us-east-1",
}


class S3Server:
    """`python -m moto.server` on a free loopback port; stop, kill and restart it by its PID."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: see {self.log}")
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("moto server did not answer within 30s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL: the store dies with requests in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API), between tests sharing one server."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=10.0)

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables that point a client (node, CLI) at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.url}


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client, for tests that act on the bucket behind the registry's back."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


class ThrottlingProxy:
    """A TCP proxy in front of a server: `bytes_per_s` caps the server->client rate (downloads),
    `upload_bytes_per_s` the client->server rate (uploads), `stall` stops responses.

    A rate of 0 means no limit. Runs on daemon threads; `close()` stops accepting.
    """

    def __init__(self, upstream_port: int, bytes_per_s: float = 0.0, upload_bytes_per_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.bytes_per_s = bytes_per_s
        self.upload_bytes_per_s = upload_bytes_per_s
        self.stall = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            src.settimeout(None)
            while True:
                rate = self.bytes_per_s if response else self.upload_bytes_per_s
                data = src.recv(4096 if rate else 16384)
                if not data:
                    break
                while response and self.stall.is_set() and not self._closed:
                    time.sleep(0.05)
                if rate:
                    time.sleep(len(data) / rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


BUCKET = "models"


def create_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    s3_client(endpoint).create_bucket(Bucket=bucket)
