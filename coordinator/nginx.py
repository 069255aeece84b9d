"""The nginx load balancer: render its config from the one template, run it on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from coordinator.processes import stop_process

TEMPLATE = Path(__file__).parent / "templates" / "nginx.conf.template"


def render(
    servers: Sequence[str],
    listen: str,
    max_body_bytes: int,
    *,
    run_dir: Path | None = None,
    worker_processes: int | str = "auto",
) -> str:
    """The nginx config for `servers` (host:port). Without `run_dir`, container paths."""
    fail = "max_fails=1 fail_timeout=10s"
    lines = "\n".join(f"        server {s} {fail};" for s in servers)
    if run_dir is None:
        paths = {"pid_file": "/tmp/nginx.pid", "error_log": "stderr", "access_log": "off", "temp_dir": "/tmp"}
        user = ""
    else:
        paths = {
            "pid_file": str(run_dir / "nginx.pid"),
            "error_log": str(run_dir / "error.log"),
            "access_log": "off",
            "temp_dir": str(run_dir),
        }
        # As root, workers would run as `nobody`; keep them as the invoking user instead.
        user = "user root;" if os.geteuid() == 0 else ""
    values = {
        **paths,
        "user": user,
        "servers": lines,
        "listen": listen,
        "max_body_bytes": str(max_body_bytes),
        "worker_processes": str(worker_processes),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


class Nginx:
    """nginx in the foreground on loopback, in its own temporary directory; stop() ends it by PID."""

    def __init__(self, servers: Sequence[str], port: int, max_body_bytes: int = 1_048_576) -> None:
        self.binary = find_nginx()
        if self.binary is None:
            raise FileNotFoundError("nginx not found: install it (Debian: apt-get install nginx-light)")
        self.port = port
        self.run_dir = Path(tempfile.mkdtemp(prefix="modelcache-nginx-"))
        self.run_dir.chmod(0o755)
        self.conf = self.run_dir / "nginx.conf"
        self.conf.write_text(
            render(servers, f"127.0.0.1:{port}", max_body_bytes, run_dir=self.run_dir, worker_processes=1)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        assert self.binary is not None
        cmd = [
            self.binary,
            "-p",
            str(self.run_dir),
            "-c",
            str(self.conf),
            "-e",
            str(self.run_dir / "error.log"),
            "-g",
            "daemon off;",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr.fileno())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.error_log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer on {self.url}: {self.error_log()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def error_log(self) -> str:
        path = self.run_dir / "error.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m coordinator.nginx --compose` prints deploy/nginx/nginx.conf."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--compose", action="store_true", help="the docker-compose config (node1..node3)")
    parser.add_argument("--server", action="append", default=[], help="host:port of a node (repeat)")
    parser.add_argument("--listen", default="8080")
    parser.add_argument("--max-body-bytes", type=int, default=1_048_576)
    args = parser.parse_args(argv)
    servers = args.server or ([f"node{i}:8000" for i in (1, 2, 3)] if args.compose else [])
    if not servers:
        parser.error("give --server host:port (repeat) or --compose")
    sys.stdout.write(render(servers, args.listen, args.max_body_bytes))


if __name__ == "__main__":
    main()
