"""HAProxy as a process: find the binary, check a config, run it in the foreground on loopback.

The config comes from `coordinator.lb.render`; `modelcache up`, the tests and the benchmarks
start HAProxy through `HAProxy` and stop it by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from coordinator.lb import BALANCE_FACTOR, render
from coordinator.processes import stop_process

INSTALL = "install haproxy >= 2.6 (Debian: apt-get install haproxy)"


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


def check_config(binary: str, conf: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c`: parse and validate a config without starting."""
    return subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)


class HAProxy:
    """HAProxy in the foreground on loopback, config in its own temporary directory; stop() ends it by PID."""

    def __init__(
        self,
        servers: Sequence[str],
        port: int,
        max_body_bytes: int = 1_048_576,
        *,
        balance_factor: int = BALANCE_FACTOR,
        hot_only: bool = True,
        grpc: tuple[int, Sequence[str]] | None = None,
        grpc_public: bool = False,
    ) -> None:
        """`grpc=(port, grpc_servers)`: also a gRPC frontend on `port`, `grpc_public` its allow
        list (see `render`)."""
        self.binary = find_haproxy()
        if self.binary is None:
            raise FileNotFoundError(f"haproxy not found: {INSTALL}")
        self.port = port
        self.grpc_port = grpc[0] if grpc is not None else None
        self.run_dir = Path(tempfile.mkdtemp(prefix="modelcache-haproxy-"))
        self.conf = self.run_dir / "haproxy.cfg"
        self.runtime_api = self.run_dir / "haproxy.sock"
        self.conf.write_text(
            render(
                servers,
                f"127.0.0.1:{port}",
                max_body_bytes,
                balance_factor=balance_factor,
                hot_only=hot_only,
                threads=1,
                grpc=(f"127.0.0.1:{grpc[0]}", grpc[1]) if grpc is not None else None,
                grpc_public=grpc_public,
                runtime_api=str(self.runtime_api),
            )
        )
        self.log = self.run_dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> HAProxy:
        assert self.binary is not None
        with self.log.open("ab") as out:
            # -db: stay in the foreground, so the PID we hold is HAProxy's.
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.error_log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not answer on {self.url}: {self.error_log()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def error_log(self) -> str:
        # The tail: each node going down logs one line per backend that tracks it (ring, hot,
        # one placed backend per node it may fail over to), so keep room for many.
        return self.log.read_text()[-20000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
