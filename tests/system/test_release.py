"""What users install: the built wheel in a fresh virtualenv, run from an empty directory.

CI once only ever installed the checkout editable, so a wheel without `node/http` (every
`modelcache node` crashed) went unnoticed. These tests build the same wheel the Dockerfile
installs and serve predictions from it, outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.haproxy_process import find_haproxy
from coordinator.launcher import LB_OFFSET, PORT_SPAN, REDIS_OFFSET
from coordinator.processes import stop_process
from tests.helpers import free_port_range

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BODY = {"features": [12, 70.5, 2, 1, None]}


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point Python back at the checkout."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MODELCACHE_")}


def _not_source(directory: str, names: list[str]) -> set[str]:
    """What a checkout holds besides its source: caches, builds, and the local ./registry of models."""
    skipped = {n for n in names if n in {".git", ".venv", "build", "__pycache__"} or n.endswith(".egg-info")}
    if Path(directory) == ROOT and "registry" in names:  # not coordinator/registry, the package
        skipped.add("registry")
    return skipped


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (a stale `build/` here would hide missing files)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_not_source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(source)],
        check=True,
        env=_clean_env(),
        timeout=300,
    )
    (built,) = work.glob("modelcache-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That wheel installed with the local extra into a new virtualenv outside the checkout."""
    work = tmp_path_factory.mktemp("release")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[local]"],
        check=True,
        env=_clean_env(),
        timeout=600,
    )
    return venv


def test_the_wheel_holds_every_package_in_the_checkout(wheel: Path) -> None:
    """Package discovery, not a list: every folder with an __init__.py ships."""
    shipped = {Path(n).parent.as_posix() for n in zipfile.ZipFile(wheel).namelist()}
    packages = {
        p.parent.relative_to(ROOT).as_posix()
        for top in ("modelcache", "node", "coordinator")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert packages <= shipped, f"missing from the wheel: {sorted(packages - shipped)}"
    assert "node/http" in packages
    assert "coordinator/templates" in shipped  # package data (the HAProxy template)


def test_the_installed_cli_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [str(installed / "bin" / "modelcache"), "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"\d+\.\d+", run.stdout)
    node = subprocess.run(
        [str(installed / "bin" / "modelcache"), "node", "--help"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert node.returncode == 0 and "usage: modelcache node" in node.stdout, node.stderr


class Up:
    """`modelcache up --port B` from the installed wheel, in its own empty directory."""

    def __init__(self, venv: Path, cwd: Path, base: int) -> None:
        cwd.mkdir()
        self.base = base
        self.out = (cwd / "up.out").open("w+")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "modelcache"), "up", "--nodes", "2", "--port", str(base)],
            cwd=cwd,
            env=_clean_env(),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def text(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def wait_banner(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if "Ctrl-C stops everything" in text:
                return text
            assert self.proc.poll() is None, f"up exited early:\n{text}"
            time.sleep(0.2)
        raise TimeoutError(f"up printed no banner in {timeout}s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        self.out.close()


@pytest.fixture
def two_clusters(installed: Path, tmp_path: Path) -> Iterator[tuple[Up, Up]]:
    base = free_port_range(2 * PORT_SPAN)
    first = Up(installed, tmp_path / "a", base)
    second = Up(installed, tmp_path / "b", base + PORT_SPAN)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.mark.skipif(find_haproxy() is None and not os.environ.get("CI"), reason="haproxy not installed")
def test_two_clusters_from_the_wheel_serve_side_by_side_and_stop_when_redis_dies(
    two_clusters: tuple[Up, Up],
) -> None:
    clusters = two_clusters
    for up in clusters:
        text = up.wait_banner()
        lb = f"http://127.0.0.1:{up.base + LB_OFFSET}"
        assert re.search(rf"^load balancer: {re.escape(lb)}\b", text, re.M), text
        ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)}
        assert ports and all(up.base <= p < up.base + PORT_SPAN for p in ports), ports
        answer = httpx.post(f"{lb}/api/v1/models/churn/predict", json=BODY, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_type"] == "churn"
        served_by = int(answer.json()["node_id"].removeprefix("node-"))
        assert up.base <= served_by < up.base + PORT_SPAN  # this cluster's node, not the other's

    # The embedded Redis of the first cluster dies: its `up` stops, naming it; the other goes on.
    first, second = clusters
    redis.Redis(port=first.base + REDIS_OFFSET).shutdown(nosave=True)
    assert first.proc.wait(30) == 1
    assert re.search(r"stopped unexpectedly:.*\bredis\b", first.text()), first.text()
    assert second.proc.poll() is None
    lb = f"http://127.0.0.1:{second.base + LB_OFFSET}"
    assert httpx.post(f"{lb}/api/v1/models/churn/predict", json=BODY, timeout=30).status_code == 200
