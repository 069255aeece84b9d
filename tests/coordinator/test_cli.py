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
from coordinator.haproxy_process import find_haproxy
from coordinator.launcher import LB_OFFSET, PORT_SPAN
from coordinator.registry import Registry
from tests.helpers import PublishFn, free_port, free_port_range, stop_process, train_booster

CLI = [sys.executable, "-m", "modelcache"]


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
    assert again.returncode == 1 and "already published; pass --force" in again.stderr
    assert publish("m", "1.0", "--force").returncode == 0
    bad = publish("../x", "1.0")
    assert bad.returncode == 2 and "invalid model type" in bad.stderr
    bad_metric = publish("m", "2.0", "--metric", "oops")
    assert bad_metric.returncode == 2 and "name=0.93" in bad_metric.stderr
    for failed in (again, bad, bad_metric):  # one line each, no usage dump, no traceback
        assert failed.stderr.startswith("modelcache: error: ") and failed.stderr.count("\n") == 1


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


def test_the_coordinators_own_cli_starts_a_node_process_without_importing_the_node() -> None:
    """`python -m coordinator.cli node` (the console script's old target) still runs a node."""
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "node", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "usage: modelcache node" in out.stdout and "--cache-max-bytes" in out.stdout


def test_main_returns_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--registry", str(tmp_path)]) == 0
    assert "no models" in capsys.readouterr().out


def test_up_starts_a_node_and_its_printed_curls_work(tmp_path: Path) -> None:
    """The quick start: `modelcache up` on an empty registry, then the curl calls it prints."""
    port = free_port_range(PORT_SPAN, start=31000)
    lb_port = port + LB_OFFSET
    proc = subprocess.Popen(
        [
            *CLI,
            "up",
            "--port",
            str(port),
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
        if find_haproxy() is not None:
            assert re.search(rf"^load balancer: http://127\.0\.0\.1:{lb_port}\b", text, re.M)
            assert all(f":{lb_port}/" in c for c in curls)
            # The placement agent runs beside HAProxy: a used model soon routes by the placement map.
            route, deadline = None, time.monotonic() + 30
            while route != "placed" and time.monotonic() < deadline:
                r = httpx.post(
                    f"http://127.0.0.1:{lb_port}/api/v1/models/churn/predict",
                    json={"features": [12, 70.5, 2, 1, None]},
                    timeout=10,
                )
                route = r.headers.get("x-modelcache-route")
                time.sleep(0.3)
            assert route == "placed"
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


def test_up_with_a_state_dir_gives_each_node_a_warm_restart(
    registry: Registry, publish: PublishFn, tmp_path: Path
) -> None:
    """`up --state-dir D`: stopped, each node leaves D/cache-state-node-PORT.json; started again
    on the same ports, it is ready with those models (no demo models: the registry has one)."""
    publish("churn", "1.0.0")
    port = free_port_range(PORT_SPAN, start=33000)
    up = [*CLI, "up", "--nodes", "1", "--no-lb", "--port", str(port), "--registry", str(registry.root)]
    up += ["--state-dir", str(tmp_path / "state")]
    url = f"http://127.0.0.1:{port}"
    for run in range(2):
        proc = subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        try:
            assert proc.stdout is not None
            lines = []
            while not lines or "Ctrl-C stops everything" not in lines[-1]:
                lines.append(proc.stdout.readline())
                assert lines[-1], "up exited early:\n" + "".join(lines)
            cached = httpx.get(f"{url}/api/v1/cache/stats", timeout=10).json()["models"]
            body = {"features": [0.1, 0.2, 0.3, 0.4]}
            answer = httpx.post(f"{url}/api/v1/models/churn/predict", json=body, timeout=30).json()
            # The first run loads on the request; the second restored churn before it was ready.
            expected = ([], False) if run == 0 else (["churn"], True)
            assert ([m["model_type"] for m in cached], answer["cached"]) == expected
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            stop_process(proc)
            proc.stdout.close()  # type: ignore[union-attr]
        assert (tmp_path / "state" / f"cache-state-node-{port}.json").is_file()


# -- the second phase: --url/--token, --json, exit codes ---------------------------
def cli_at(
    url: str, *args: str, token: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI over HTTP only: no Redis URL, no registry in its environment or cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    globals_ = ["--url", url] + (["--token", token] if token else [])
    return subprocess.run(
        [*CLI, *globals_, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


ROOT = Path(__file__).resolve().parents[2]


def one_json(proc: subprocess.CompletedProcess[str]):
    """stdout is exactly one JSON document (json.loads refuses anything before or after it)."""
    return json.loads(proc.stdout)


def test_cluster_commands_over_http(cluster, publish, tmp_path: Path) -> None:
    from tests.conftest import CLUSTER_TOKEN

    publish("m", "1.0")
    publish("m", "2.0")
    nodes = cluster(2)
    url = nodes[0].url

    out = cli_at(url, "pin", "m", "1.0", "--wait", "--json", token=CLUSTER_TOKEN, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = one_json(out)
    assert doc["ok"] is True and doc["change"]["version"] == "1.0"
    assert sorted(a["node_id"] for a in doc["acks"]) == sorted(f"node-{n.port}" for n in nodes)
    assert {(a["outcome"], a["version"]) for a in doc["acks"]} == {("ok", "1.0")}

    # Without --wait, --json still prints the (one) document: the published change.
    out = cli_at(nodes[1].url, "reload", "m", "--json", token=CLUSTER_TOKEN, cwd=tmp_path)
    assert out.returncode == 0 and one_json(out)["change"]["seq"] > doc["change"]["seq"]

    status = one_json(cli_at(url, "status", "--json", cwd=tmp_path))
    assert len(status["nodes"]) == 2 and status["pins"] == {"m": "1.0"}
    models = one_json(cli_at(url, "models", "--json", cwd=tmp_path))
    assert [(m["model_type"], m["versions"], m["pin"]) for m in models] == [("m", ["1.0", "2.0"], "1.0")]

    human = cli_at(url, "unpin", "m", "--wait", token=CLUSTER_TOKEN, cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert "unpinned m: published as change #" in human.stdout
    assert all(f"node-{n.port}" in human.stdout for n in nodes)  # the acknowledgement table
    table = cli_at(url, "status", cwd=tmp_path).stdout
    assert f"node-{nodes[0].port}" in table and "pins: none" in table


def test_over_http_failures_have_their_exit_code_and_one_line(cluster, publish, tmp_path: Path) -> None:
    from tests.conftest import CLUSTER_TOKEN

    publish("m", "1.0")
    url = cluster(1)[0].url
    cases = [
        (cli_at(url, "pin", "m", "7.0", "--json", token=CLUSTER_TOKEN), 1, "no version '7.0'"),
        (cli_at(url, "reload", "nope", token=CLUSTER_TOKEN), 1, "unknown model type 'nope'"),
        (cli_at(url, "pin", "m", "1.0", token="wrong"), 1, "admin token was refused"),
        (cli_at(url, "pin", "m", "1.0"), 1, "no admin token sent"),
        (cli_at(f"http://127.0.0.1:{free_port()}", "status", "--json"), 3, "cannot reach"),
        (cli_at(url, "pin", "m", "1.0", "--wait", "--timeout", "999", token=CLUSTER_TOKEN), 2, "timeout_s"),
    ]
    for proc, code, says in cases:
        assert proc.returncode == code, (says, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("modelcache: error: ") and says in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        if "--json" in proc.args:  # --json keeps its promise on failure too: one document
            doc = one_json(proc)
            assert doc["ok"] is False and doc["exit_code"] == code and says in doc["error"], doc
        else:
            assert proc.stdout == "", proc.stdout
    usage = cli_at(url, "status", "--json", "--bogus")
    assert usage.returncode == 2 and one_json(usage) == {
        "ok": False,
        "error": "usage error (see stderr)",
        "exit_code": 2,
    }


def test_redis_mode_json_is_one_document_and_exit_codes(
    registry: Registry,
    publish,
    redis_server,
    prefix: str,
) -> None:
    publish("m", "1.0")
    where = ["--registry", str(registry.root), "--redis-url", redis_server.url, "--redis-prefix", prefix]
    out = run("pin", "m", "1.0", "--json", *where)
    doc = one_json(out)
    assert doc["ok"] is True and doc["change"]["seq"] >= 1 and doc["change"]["kind"] == "pin"
    out = run("pin", "m", "1.0", "--wait", "--timeout", "0.5", "--json", *where)
    assert one_json(out)["acks"] == [] and "no live nodes" in out.stderr  # human text on stderr
    unknown = run("pin", "m", "9.9", *where, check=False)
    assert unknown.returncode == 1 and "no version '9.9'" in unknown.stderr
    down = run(
        "pin", "m", "1.0", *where[:2], "--redis-url", f"redis://127.0.0.1:{free_port()}/0", check=False
    )
    assert down.returncode == 3 and "unreachable" in down.stderr and down.stderr.count("\n") == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCACHE_")}
    neither = subprocess.run([*CLI, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert neither.returncode == 2 and "pass --url" in neither.stderr


def test_version_and_help_document_exit_codes_and_examples() -> None:
    assert re.fullmatch(r"modelcache \S+\n", run("--version").stdout)
    top = run("--help").stdout
    assert "exit codes:" in top and "3  the cluster is unreachable" in top and "MODELCACHE_URL" in top
    for command in ("up", "publish", "models", "pin", "unpin", "reload", "status", "demo-models"):
        text = run(command, "--help").stdout
        assert "example:\n  modelcache " in text and "exit codes:" in text, command
    usage = run("pin", check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("modelcache: error: the following arguments")


def test_piped_tables_are_not_cut_to_80_columns(tmp_path: Path) -> None:
    train_booster().save_model(tmp_path / "m.ubj")
    reg = str(tmp_path / "reg")
    metrics = [a for i in range(6) for a in ("--metric", f"metric_with_a_long_name_{i}=0.5")]
    run(
        "publish",
        str(tmp_path / "m.ubj"),
        "--model-type",
        "churn",
        "--version",
        "1.0",
        *metrics,
        "--registry",
        reg,
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [*CLI, "models", "--registry", reg], capture_output=True, text=True, env=env, timeout=60
    )
    row = next(line for line in out.stdout.splitlines() if "churn" in line)
    assert "metric_with_a_long_name_5=0.5" in row and len(row) > 200


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write (`| head -0`)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) in (0, 141) and err == "", err
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    head = subprocess.run(
        f"{shlex.join(CLI)} models --registry {tmp_path} --json | head -c 0",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in head.stderr and "BrokenPipe" not in head.stderr, head.stderr


def test_node_command_runs_the_installed_package_not_a_node_folder_in_cwd(tmp_path: Path) -> None:
    """The console script's sys.path[0] is its own directory, not the current one."""
    impostor = tmp_path / "work" / "node"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "__main__.py").write_text("print('IMPOSTOR')\n")
    script = tmp_path / "bin" / "modelcache"
    script.parent.mkdir()
    script.write_text("import sys\nfrom modelcache.__main__ import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script), "node", "--help"],
        capture_output=True,
        text=True,
        cwd=impostor.parent,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "IMPOSTOR" not in out.stdout and "--cache-max-bytes" in out.stdout


def test_publish_reads_once_reports_progress_and_hashes_what_it_copied(tmp_path: Path) -> None:
    import hashlib

    artifact = tmp_path / "big.joblib"
    artifact.write_bytes(os.urandom(3 * (1 << 20) + 5))
    seen: list[tuple[int, int]] = []
    meta = Registry(tmp_path / "reg").publish(
        artifact, "big", "1.0", progress=lambda d, t: seen.append((d, t))
    )
    size = artifact.stat().st_size
    assert seen[-1] == (size, size) and len(seen) == 4 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert meta.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert Registry(tmp_path / "reg").artifact_path(meta).read_bytes() == artifact.read_bytes()


def test_publish_shows_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    artifact = tmp_path / "big.joblib"
    artifact.write_bytes(os.urandom(1 << 20))
    primary, secondary = pty.openpty()
    reg = str(tmp_path / "reg")
    args = [*CLI, "publish", str(artifact), "--model-type", "big", "--version", "1.0", "--registry", reg]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=60)
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert proc.returncode == 0 and "publishing big.joblib" in shown.decode(errors="replace")
    piped = run(*args[len(CLI) :], "--force")
    assert "publishing big.joblib" not in piped.stderr and "published big 1.0" in piped.stdout
