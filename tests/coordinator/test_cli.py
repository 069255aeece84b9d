"""The `modelcache` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator.cli import main
from coordinator.nginx import find_nginx
from coordinator.registry import Registry
from tests.helpers import free_port, stop_process, train_booster

CLI = [sys.executable, "-m", "coordinator.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables at 80 columns without a terminal
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_publish_then_models(tmp_path: Path) -> None:
    train_booster().save_model(tmp_path / "m.ubj")
    reg = str(tmp_path / "reg")
    out = run(
        "publish",
        str(tmp_path / "m.ubj"),
        "--model-type",
        "churn",
        "--version",
        "1.10.0",
        "--feature",
        "a",
        "--feature",
        "b",
        "--feature",
        "c",
        "--feature",
        "d",
        "--metric",
        "f1=0.91",
        "--registry",
        reg,
    ).stdout
    assert "published churn 1.10.0" in out
    run("publish", str(tmp_path / "m.ubj"), "--model-type", "churn", "--version", "1.9.0", "--registry", reg)
    meta = Registry(reg).metadata("churn", "1.10.0")
    assert meta.features == ("a", "b", "c", "d") and meta.metrics == {"f1": 0.91}
    listed = json.loads(run("models", "--json", "--registry", reg).stdout)
    assert listed == [{"model_type": "churn", "versions": ["1.9.0", "1.10.0"], "latest": "1.10.0"}]
    table = run("models", "--registry", reg).stdout
    assert "1.10.0 (latest)" in table and "f1=0.91" in table


def test_publish_errors_are_clear(tmp_path: Path) -> None:
    train_booster().save_model(tmp_path / "m.ubj")

    def publish(model_type: str, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            "publish",
            str(tmp_path / "m.ubj"),
            "--model-type",
            model_type,
            "--version",
            version,
            "--registry",
            str(tmp_path / "reg"),
            *extra,
            check=False,
        )

    assert publish("m", "1.0").returncode == 0
    again = publish("m", "1.0")
    assert again.returncode == 2 and "already published; pass --force" in again.stderr
    assert publish("m", "1.0", "--force").returncode == 0
    bad = publish("../x", "1.0")
    assert bad.returncode == 2 and "invalid model type" in bad.stderr
    bad_metric = publish("m", "2.0", "--metric", "oops")
    assert bad_metric.returncode == 2 and "name=0.93" in bad_metric.stderr


def test_demo_models_publish_types_versions_and_a_prerelease(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    out = run("demo-models", "--registry", str(reg)).stdout
    assert "[1/7] training churn 1.0.0" in out
    registry = Registry(reg)
    types = registry.model_types()
    assert len(types) >= 3
    assert all(len(registry.versions(t)) >= 2 for t in types)
    versions = [v for t in types for v in registry.versions(t)]
    assert any("b" in v or "rc" in v for v in versions)
    meta = registry.metadata("churn", registry.latest("churn"))
    assert meta.features and {"f1", "roc_auc"} <= set(meta.metrics)
    assert meta.metrics["roc_auc"] > 0.7  # they learned something
    assert "already there" in run("demo-models", "--registry", str(reg)).stdout


def test_node_command_runs_the_node_entry_point() -> None:
    out = run("node", "--help")
    assert "usage: modelcache node" in out.stdout and "--redis-url" in out.stdout


def test_main_returns_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--registry", str(tmp_path)]) == 0
    assert "no models" in capsys.readouterr().out


def test_up_starts_a_node_and_its_printed_curls_work(tmp_path: Path) -> None:
    """The quick start: `modelcache up` on an empty registry, then the curl calls it prints."""
    port, lb_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "up",
            "--port",
            str(port),
            "--lb-port",
            str(lb_port),
            "--registry",
            str(tmp_path / "registry"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "up exited early:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert "publishing demo models" in text
        token = re.search(r"admin token: (\S+)", text).group(1)
        curls = [ln.strip() for ln in lines if ln.strip().startswith("curl ")]
        assert len(curls) >= 2
        predict = subprocess.run(curls[0], shell=True, capture_output=True, text=True, timeout=30)
        body = json.loads(predict.stdout)
        assert body["model_type"] == "churn" and "prediction" in body
        for curl in curls[1:]:
            out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and "error" not in json.loads(out.stdout), curl
        assert token in text
        assert len(re.findall(r"^node: http://127\.0\.0\.1:\d+$", text, re.M)) == 3
        if find_nginx() is not None:
            assert re.search(rf"^load balancer: http://127\.0\.0\.1:{lb_port}\b", text, re.M)
            assert all(f":{lb_port}/" in c for c in curls)
        # The printed cluster-wide pin reached every node.
        pin = next(c for c in curls if "/api/v1/pins/churn" in c)
        acks = json.loads(subprocess.run(shlex.split(pin), capture_output=True, text=True, timeout=30).stdout)
        assert [a["outcome"] for a in acks["acks"]] == ["ok"] * 3
        # The printed status command runs as printed.
        status = next(ln.strip() for ln in lines if ln.strip().endswith(" status"))
        shown = subprocess.run(f"{status} --json", shell=True, capture_output=True, text=True, timeout=30)
        assert len(json.loads(shown.stdout)["nodes"]) == 3
        assert json.loads(shown.stdout)["pins"] == {"churn": "1.0.0"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        stop_process(proc)
        proc.stdout.close()
