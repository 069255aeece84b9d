"""The `modelcache` registry commands against `s3://` (a real S3-compatible server), as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coordinator.redis_server import RedisServer
from coordinator.registry import open_registry
from testkit.s3_server import BUCKET, S3Server, ThrottlingProxy, s3_client
from tests.helpers import eventually, train_booster

CLI = [sys.executable, "-m", "coordinator.cli"]
REGISTRY = "s3://models/cli"
ROOT = str(Path(__file__).resolve().parents[2])  # this checkout's code, from any working directory


def run(cwd: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200", **env},
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_publish_models_and_pin_against_s3(
    tmp_path: Path, s3_env: dict[str, str], redis_server: RedisServer, prefix: str
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    train_booster().save_model(tmp_path / "m.ubj")
    for version in ("1.9.0", "1.10.0"):
        publish = ["publish", str(tmp_path / "m.ubj"), "--model-type", "churn", "--version", version]
        out = run(work, s3_env, *publish, "--registry", REGISTRY).stdout
        assert f"published churn {version}" in out and REGISTRY in out
    assert list(work.iterdir()) == []  # never a local directory named `s3:`

    listing = json.loads(run(work, s3_env, "models", "--registry", REGISTRY, "--json").stdout)
    assert listing == [{"model_type": "churn", "versions": ["1.9.0", "1.10.0"], "latest": "1.10.0"}]
    table = run(work, {**s3_env, "MODELCACHE_REGISTRY": REGISTRY}, "models").stdout  # the variable too
    assert REGISTRY in table and "1.10.0" in table

    where = ["--registry", REGISTRY, "--redis-url", redis_server.url, "--redis-prefix", prefix]
    assert run(work, s3_env, "pin", "churn", "1.9.0", *where).returncode == 0
    refused = run(work, s3_env, "pin", "churn", "7.0.0", *where, check=False)
    assert refused.returncode == 1 and "7.0.0" in refused.stdout + refused.stderr  # checked against the store
    assert list(work.iterdir()) == []


def test_demo_models_into_s3(tmp_path: Path, s3_env: dict[str, str]) -> None:
    run(tmp_path, s3_env, "demo-models", "--registry", REGISTRY)
    listing = json.loads(run(tmp_path, s3_env, "models", "--registry", REGISTRY, "--json").stdout)
    assert len(listing) >= 2 and all(entry["latest"] for entry in listing)
    again = run(tmp_path, s3_env, "demo-models", "--registry", REGISTRY).stdout
    assert "published 0 demo model versions" in again  # already there: nothing retrained
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_publisher_killed_mid_upload_publishes_nothing(
    tmp_path: Path, s3_env: dict[str, str], s3_server: S3Server
) -> None:
    """`modelcache publish` killed (SIGKILL) during a multipart upload: no version appears."""
    big = tmp_path / "big.joblib"
    big.write_bytes(os.urandom(24 << 20))  # three parts
    proxy = ThrottlingProxy(s3_server.port, upload_bytes_per_s=4 << 20)  # ~6 s to upload
    try:
        env = {**os.environ, "PYTHONPATH": ROOT, **s3_env, "AWS_ENDPOINT_URL": proxy.url}
        publish = [
            *CLI,
            "publish",
            str(big),
            "--model-type",
            "big",
            "--version",
            "1.0",
            "--registry",
            REGISTRY,
        ]
        proc = subprocess.Popen(
            publish, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = s3_client(s3_env["AWS_ENDPOINT_URL"])
        assert eventually(
            lambda: bool(client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")), timeout=60
        )
        proc.kill()  # by its PID, mid-upload
        proc.wait()
    finally:
        proxy.close()
    registry = open_registry(REGISTRY)
    assert registry.model_types() == []
    assert not registry.has_version("big", "1.0")
    assert list(tmp_path.iterdir()) == [big]


def test_an_unreachable_store_is_a_clear_failure(tmp_path: Path, s3_env: dict[str, str]) -> None:
    from tests.helpers import free_port

    env = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    out = run(tmp_path, env, "models", "--registry", REGISTRY, check=False)
    assert out.returncode == 1
    assert "object store s3://models/cli" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_missing_credentials_are_named(tmp_path: Path, s3_env: dict[str, str]) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"], "AWS_REGION": "us-east-1"}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    proc = subprocess.run(
        [*CLI, "models", "--registry", REGISTRY],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 1
    assert "no AWS credentials found" in proc.stdout + proc.stderr


def test_up_serves_from_s3_and_makes_no_local_s3_directory(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """`modelcache up --registry s3://...`: demo models go to the store, the node loads from it."""
    import httpx

    from tests.helpers import free_port_range

    base = free_port_range(100, start=43000)
    env = {**os.environ, "PYTHONPATH": ROOT, **s3_env}
    cmd = [*CLI, "up", "--nodes", "1", "--no-lb", "--port", str(base), "--registry", "s3://models/up"]
    out = tmp_path / "up.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        assert eventually(lambda: "Ctrl-C stops everything" in out.read_text(), 120), out.read_text()
        assert "registry: s3://models/up" in out.read_text()
        answer = httpx.post(
            f"http://127.0.0.1:{base}/api/v1/models/churn/predict",
            json={"features": [1, 2, 3, 4, 5]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        proc.wait(30)
    assert {p.name for p in tmp_path.iterdir()} == {"up.out", ".modelcache-logs"}  # no "s3:" directory
