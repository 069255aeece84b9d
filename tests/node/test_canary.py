"""Cluster-wide canaries end to end: real redis-server, real node processes on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from coordinator.redis_server import RedisServer
from coordinator.registry import Registry
from node.resolver import in_canary, routing_bucket
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, corrupt, metric

ROW = [0.1, 0.2, 0.3, 0.4]
ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
Cluster = Callable[..., list[NodeProcess]]


def predict(client: httpx.Client, node: NodeProcess, key: str | None = None, **body: object) -> dict:
    doc = {"model_type": "m", "features": ROW, **body}
    if key is not None:
        doc["routing_key"] = key
    r = client.post(f"{node.url}/api/v1/predict", json=doc)
    assert r.status_code == 200, r.text
    return r.json()


def put_canary(node: NodeProcess, version: str, percent: float, **extra: object) -> httpx.Response:
    body = {"version": version, "percent": percent, "wait": True, **extra}
    return httpx.put(f"{node.url}/api/v1/canaries/m", json=body, headers=ADMIN, timeout=30)


def test_routing_bucket_is_a_stable_hash_of_model_type_and_key() -> None:
    # Fixed values: a salted or per-process hash (Python's hash()) would move users between
    # versions on restart and differ between nodes. The model type is part of the hash.
    assert [routing_bucket("m", f"user-{i}") for i in range(3)] == [6673, 2896, 1611]
    assert routing_bucket("churn", "user-0") == 9515
    share = sum(in_canary("m", 20, f"k{i}", lambda: 1.0) for i in range(10_000)) / 10_000
    assert 0.18 < share < 0.22
    assert not in_canary("m", 0, "k", lambda: 0.0) and in_canary("m", 100, "k", lambda: 0.99)
    assert in_canary("m", 20, None, lambda: 0.19) and not in_canary("m", 20, None, lambda: 0.2)


def test_canary_share_routing_keys_promote_and_abort_on_three_nodes(
    cluster: Cluster, publish: PublishFn
) -> None:
    publish("m", "1.0")
    publish("m", "2.0")
    nodes = cluster(3)
    r = httpx.put(f"{nodes[0].url}/api/v1/pins/m", json={"version": "1.0", "wait": True}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ok"], r.text

    r = put_canary(nodes[1], "2.0", 20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["change"]["kind"] == "canary"
    assert [(a["outcome"], a["version"]) for a in body["acks"]] == [("ok", "2.0")] * 3
    listed = httpx.get(f"{nodes[2].url}/api/v1/canaries").json()["canaries"]
    assert listed["m"]["version"] == "2.0" and listed["m"]["percent"] == 20
    assert [n["outcome"] for n in listed["m"]["nodes"]] == ["ok"] * 3

    with httpx.Client(timeout=10) as client:
        # 1,500 requests naming no version and carrying no key: a per-node random draw each.
        versions = Counter(predict(client, nodes[i % 3])["version"] for i in range(1500))
        assert set(versions) == {"1.0", "2.0"}
        assert 0.14 * 1500 <= versions["2.0"] <= 0.26 * 1500, versions
        print(f"canary share without keys: {versions['2.0'] / 1500:.3f} ({dict(versions)})")
        # A request naming a version is not routed.
        assert {predict(client, nodes[0], version="1.0")["version"] for _ in range(20)} == {"1.0"}

        # 200 routing keys: one version per key on every node, body key or header (V2 too).
        per_key: dict[str, set[str]] = {}
        for i in range(200):
            key = f"user-{i}"
            seen = {predict(client, n, key)["version"] for n in nodes}
            v2 = client.post(
                f"{nodes[i % 3].url}/v2/models/m/infer",
                json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
                headers={"X-Modelcache-Routing-Key": key},
            )
            assert v2.status_code == 200, v2.text
            seen.add(v2.json()["model_version"])
            per_key[key] = seen
        assert all(len(v) == 1 for v in per_key.values()), [k for k, v in per_key.items() if len(v) > 1]
        keyed = sum(v == {"2.0"} for v in per_key.values())
        print(f"routing keys on the canary: {keyed}/200")
        assert 20 <= keyed <= 60  # ~20% of 200 keys (binomial sd ~5.7)

    # Per-version metrics on every node.
    for n in nodes:
        assert (metric(n.url, "modelcache_predictions_total", model_type="m", version="2.0") or 0) > 0
        assert (metric(n.url, "modelcache_predictions_total", model_type="m", version="1.0") or 0) > 0
        assert metric(n.url, "modelcache_canary_percent", model_type="m", version="2.0") == 20

    r = httpx.post(f"{nodes[0].url}/api/v1/canaries/m/promote", params={"wait": True}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    assert r.json()["change"]["kind"] == "promote" and r.json()["change"]["version"] == "2.0"
    assert httpx.get(f"{nodes[1].url}/api/v1/canaries").json() == {"canaries": {}}
    assert httpx.get(f"{nodes[1].url}/api/v1/pins").json() == {"pins": {"m": "2.0"}}
    with httpx.Client(timeout=10) as client:
        assert {predict(client, nodes[i % 3])["version"] for i in range(60)} == {"2.0"}
    for n in nodes:
        assert metric(n.url, "modelcache_canary_percent", model_type="m", version="2.0") is None

    # Abort: 100% back to the served (pinned) version.
    assert put_canary(nodes[2], "1.0", 50).json()["ok"] is True
    with httpx.Client(timeout=10) as client:
        assert {predict(client, nodes[i % 3])["version"] for i in range(90)} == {"1.0", "2.0"}
        r = httpx.delete(f"{nodes[0].url}/api/v1/canaries/m", params={"wait": True}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["ok"] is True and len(r.json()["acks"]) == 3
        assert {predict(client, nodes[i % 3])["version"] for i in range(90)} == {"2.0"}
    again = httpx.delete(f"{nodes[0].url}/api/v1/canaries/m", headers=ADMIN).json()
    assert again["change"]["seq"] == 0 and "no canary ran for m" in again["detail"]


def test_a_corrupt_canary_serves_the_stable_version_and_acks_failed(
    cluster: Cluster, publish: PublishFn, registry: Registry
) -> None:
    publish("m", "1.0")
    corrupt(registry, publish("m", "1.1b1"))  # a pre-release: latest stays 1.0
    nodes = cluster(3)

    r = put_canary(nodes[0], "1.1b1", 50)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False
    assert [a["outcome"] for a in body["acks"]] == ["failed"] * 3
    assert all(
        "canary 1.1b1 not loaded" in a["detail"] and "100% to 1.0" in a["detail"] for a in body["acks"]
    )
    listed = httpx.get(f"{nodes[1].url}/api/v1/canaries").json()["canaries"]["m"]
    assert [n["outcome"] for n in listed["nodes"]] == ["failed"] * 3

    with httpx.Client(timeout=10) as client:
        answers = [
            client.post(f"{nodes[i % 3].url}/api/v1/predict", json={"model_type": "m", "features": ROW})
            for i in range(300)
        ]
    assert [a.status_code for a in answers] == [200] * 300
    assert {a.json()["version"] for a in answers} == {"1.0"}


def test_canary_inputs_token_percent_and_version(cluster: Cluster, publish: PublishFn) -> None:
    publish("m", "1.0")
    publish("m", "1.1")
    [node] = cluster(1)
    url = f"{node.url}/api/v1/canaries/m"
    # The token is checked before the body: no token is a 401 even for a body that is junk.
    assert httpx.put(url, content=b"{junk").status_code == 401
    assert httpx.put(url, json={"version": "1.1", "percent": 10}).status_code == 401
    assert httpx.delete(url).status_code == 401
    assert httpx.post(f"{url}/promote").status_code == 401
    for percent in (-1, 100.01, "20", True, None):
        r = httpx.put(url, json={"version": "1.1", "percent": percent}, headers=ADMIN)
        assert r.status_code == 422 and "percent" in r.json()["error"], (percent, r.text)
    r = httpx.put(url, content=b'{"version": "1.1", "percent": NaN}', headers=ADMIN)
    assert r.status_code == 422
    r = httpx.put(url, json={"version": "7.0", "percent": 10}, headers=ADMIN)
    assert r.status_code == 404 and "no version '7.0'" in r.json()["error"]
    r = httpx.put(f"{node.url}/api/v1/canaries/nope", json={"version": "1.0", "percent": 10}, headers=ADMIN)
    assert r.status_code == 404
    r = httpx.post(f"{url}/promote", headers=ADMIN)
    assert r.status_code == 404 and r.json()["code"] == "canary_not_found"
    # Routing keys are bounded.
    too_long = {"model_type": "m", "features": ROW, "routing_key": "k" * 257}
    assert httpx.post(f"{node.url}/api/v1/predict", json=too_long).status_code == 422
    r = httpx.post(
        f"{node.url}/api/v1/predict",
        json={"model_type": "m", "features": ROW},
        headers={"X-Modelcache-Routing-Key": "k" * 257},
    )
    assert r.status_code == 422
    assert httpx.get(f"{node.url}/api/v1/canaries").json() == {"canaries": {}}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_canary_cli_over_http_and_redis_with_json(
    cluster: Cluster, publish: PublishFn, registry: Registry, redis_server: RedisServer, prefix: str
) -> None:
    publish("m", "1.0")
    publish("m", "1.1b1")
    nodes = cluster(2)
    http = ["--url", nodes[0].url, "--token", CLUSTER_TOKEN]

    doc = json.loads(cli(*http, "canary", "m", "1.1b1", "--percent", "30", "--wait", "--json").stdout)
    assert doc["ok"] is True and [a["outcome"] for a in doc["acks"]] == ["ok", "ok"]
    listed = json.loads(cli(*http, "canary", "--list", "--json").stdout)
    assert listed["canaries"]["m"]["version"] == "1.1b1" and listed["canaries"]["m"]["percent"] == 30
    assert len(listed["canaries"]["m"]["nodes"]) == 2

    doc = json.loads(cli(*http, "canary", "m", "--promote", "--wait", "--json").stdout)
    assert doc["ok"] is True and doc["change"]["version"] == "1.1b1"
    assert httpx.get(f"{nodes[1].url}/api/v1/pins").json() == {"pins": {"m": "1.1b1"}}
    assert json.loads(cli(*http, "canary", "--list", "--json").stdout) == {"canaries": {}}

    doc = json.loads(cli(*http, "canary", "m", "1.0", "--percent", "10", "--json").stdout)
    assert doc["change"]["kind"] == "canary"
    doc = json.loads(cli(*http, "canary", "m", "--abort", "--wait", "--json").stdout)
    assert doc["ok"] is True and doc["change"]["kind"] == "canary_abort"

    # Failures keep their exit codes; --json is still one document or nothing on stdout.
    bad = cli(*http, "canary", "m", "1.0", "--percent", "120", "--json", check=False)
    assert bad.returncode == 2 and "percent" in bad.stderr
    missing = cli(*http, "canary", "m", "9.9", "--percent", "5", check=False)
    assert missing.returncode == 1 and "no version '9.9'" in missing.stderr
    assert cli(*http, "canary", "m", "--promote", check=False).returncode == 1
    assert cli("--token", CLUSTER_TOKEN, "canary", "m", check=False).returncode == 2
    assert cli("--url", nodes[0].url, "canary", "m", "1.0", "--percent", "5", check=False).returncode == 1

    # Over Redis: the same documents.
    redis_args = ["--redis-url", redis_server.url, "--redis-prefix", prefix, "--registry", str(registry.root)]
    doc = json.loads(cli("canary", "m", "1.0", "--percent", "25", "--wait", "--json", *redis_args).stdout)
    assert doc["ok"] is True and len(doc["acks"]) == 2
    listed = json.loads(cli("canary", "--list", "--json", *redis_args).stdout)
    assert listed["canaries"]["m"]["percent"] == 25
    # One document both ways (coordinator.control answers both), per-node outcomes included.
    assert [n["outcome"] for n in listed["canaries"]["m"]["nodes"]] == ["ok", "ok"]
    assert listed == json.loads(cli(*http, "canary", "--list", "--json").stdout)
    doc = json.loads(cli("canary", "m", "--abort", "--json", *redis_args).stdout)
    assert doc["change"]["kind"] == "canary_abort"
    assert cli("canary", "m", "1.0", "--percent", "-3", *redis_args, check=False).returncode == 2


@pytest.mark.parametrize("percent", [0, 100])
def test_zero_and_hundred_percent_are_all_or_nothing(
    cluster: Cluster, publish: PublishFn, percent: int
) -> None:
    publish("m", "1.0")
    publish("m", "2.0b1")
    [node] = cluster(1)
    assert put_canary(node, "2.0b1", percent).json()["ok"] is True
    with httpx.Client(timeout=10) as client:
        seen = {predict(client, node, key=None if i % 2 else f"k{i}")["version"] for i in range(60)}
    assert seen == ({"2.0b1"} if percent == 100 else {"1.0"})
