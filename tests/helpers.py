"""Test helpers shared by every test module (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from coordinator.processes import free_port as free_port
from coordinator.processes import port_free
from coordinator.processes import stop_process as stop_process
from coordinator.registry import ModelMetadata, Registry
from testkit.model_files import train_booster as train_booster
from testkit.model_files import write_slow_model as write_slow_model

FEATURES = ("f0", "f1", "f2", "f3")
PublishFn = Callable[..., ModelMetadata]


def free_port_range(span: int, start: int = 21000) -> int:
    """A base port B such that B .. B + span - 1 are all free right now (for `modelcache up --port B`)."""
    for base in range(start, 65535 - span, span):
        if all(port_free("127.0.0.1", p) for p in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports")


def corrupt(registry: Registry, meta: ModelMetadata) -> None:
    """Flip bytes of a published artifact so its checksum no longer matches."""
    path = registry.artifact_path(meta)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


class NodeProcess:
    """A real node (`python -m node`) on a free loopback port."""

    def __init__(self, registry: Path, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.registry = registry
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> NodeProcess:
        env = {
            **os.environ,
            "MODELCACHE_REGISTRY": str(self.registry),
            "MODELCACHE_NODE_ID": f"node-{self.port}",
            "MODELCACHE_LOG_LEVEL": "info",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            wait_http(f"{self.url}/readyz", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample from a node's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def eventually(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `check` until it holds or `timeout` passes (bounded waits, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def require_binary(name: str, install: str) -> str:
    """The path of `name`; skip (fail under CI=true) when it is missing, naming what to install."""
    import shutil

    import pytest

    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed: {install}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI must run this test, not skip it)")
        pytest.skip(message)
    return path


class HungReads:
    """Reads of chosen versions' artifacts block until released, as on a hung network mount.

    A hung mount cannot be made in a test, and the registry refuses a FIFO (whose open would
    block), so the hang is injected into the registry's one read function.
    """

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.versions: set[tuple[str, str]] = set()
        real = Registry._read

        def _read(registry: Registry, model_type: str, version: str, name: str, limit: int) -> bytes:
            if (model_type, version) in self.versions and name != "metadata.json":
                self.release.wait()
            return real(registry, model_type, version, name, limit)

        self.read = _read

    def hang(self, model_type: str, version: str) -> None:
        self.versions.add((model_type, version))
