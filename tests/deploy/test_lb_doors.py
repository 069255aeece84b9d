"""The Kubernetes load balancer's two doors, run for real: HAProxy with the Kubernetes routing rules
in front of a real node.

The public door (the Ingress's backend) serves inference and read-only calls; admin calls,
/metrics, /docs and /api/v1/cluster answer on the in-cluster admin door only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from coordinator.haproxy_process import INSTALL, HAProxy
from coordinator.lb import render
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, free_port, require_binary

ROW = [0.1, 0.2, 0.3, 0.4]
ADMIN = {"Authorization": f"Bearer {CLUSTER_TOKEN}"}
Doors = tuple[httpx.Client, httpx.Client]


@pytest.fixture
def doors(cluster: Callable[..., list[NodeProcess]], publish: PublishFn) -> Iterator[Doors]:
    """(public, admin) clients of one HAProxy rendered with Kubernetes' two doors, one node behind."""
    require_binary("haproxy", INSTALL)
    publish("m", "1.0")
    [node] = cluster(1)
    public_port, admin_port = free_port(), free_port()
    lb = HAProxy([f"127.0.0.1:{node.port}"], public_port)
    # The same rendering as deploy/k8s/lb-config.yaml, on loopback ports and a static server.
    lb.conf.write_text(
        render(
            [f"127.0.0.1:{node.port}"],
            f"127.0.0.1:{public_port}",
            1_048_576,
            threads=1,
            admin_listen=f"127.0.0.1:{admin_port}",
        )
    )
    lb.start()
    try:
        with (
            httpx.Client(base_url=lb.url, timeout=30) as public,
            httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=30) as admin,
        ):
            yield public, admin
    finally:
        lb.stop()


PUBLIC_CALLS = [
    ("POST", "/api/v1/models/m/predict", {"features": ROW}),
    ("POST", "/api/v1/models/m/batch_predict", {"instances": [ROW, ROW]}),
    ("POST", "/api/v1/predict", {"model_type": "m", "features": ROW}),
    ("POST", "/api/v1/batch_predict", {"model_type": "m", "instances": [ROW]}),
    ("GET", "/api/v1/models", None),
    ("GET", "/api/v1/models/m/versions/1.0", None),
    ("GET", "/api/v1/pins", None),
    ("GET", "/api/v1/canaries", None),
    ("GET", "/v2/models/m", None),
    ("GET", "/v2/health/live", None),
    ("GET", "/healthz", None),
]

INSIDE_CALLS = [
    ("POST", "/api/v1/models/reload", {"scope": "cluster"}),
    ("PUT", "/api/v1/pins/m", {"version": "1.0"}),
    ("DELETE", "/api/v1/pins/m", None),
    ("PUT", "/api/v1/canaries/m", {"version": "1.0", "percent": 10}),
    ("POST", "/api/v1/canaries/m/promote", None),
    ("POST", "/v2/repository/models/m/load", None),
    ("GET", "/metrics", None),
    ("GET", "/api/v1/cluster", None),
    ("GET", "/api/v1/cache/stats", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    # A read path with a writing method, and paths that try to walk out of an allowed prefix.
    ("POST", "/api/v1/models", {}),
    ("GET", "/api/v1/models/../cluster", None),
    ("GET", "//api/v1/cluster", None),
    ("GET", "/api/v1/models/m/versions/1.0/../../../../cluster", None),
    ("GET", "/api/v1/models/m/versions/%2e%2e%2f%2e%2e%2fcluster", None),
]


def test_the_public_door_serves_inference_and_read_only_calls(doors: Doors) -> None:
    public, _ = doors
    for method, path, body in PUBLIC_CALLS:
        r = public.request(method, path, json=body, headers=ADMIN)
        assert r.status_code == 200, (method, path, r.text)


def test_the_public_door_refuses_admin_metrics_cluster_and_docs(doors: Doors) -> None:
    """Refused even with the right admin token: these routes are not on the internet at all."""
    public, _ = doors
    for method, path, body in INSIDE_CALLS:
        r = public.request(method, path, json=body, headers=ADMIN)
        assert r.status_code == 404 and r.json()["code"] == "not_public", (method, path, r.text)
        assert "x-modelcache-node" not in r.headers, f"{method} {path} reached a node"


def test_the_admin_door_serves_every_route(doors: Doors) -> None:
    _, admin = doors
    reload = admin.post("/api/v1/models/reload", json={"scope": "cluster", "wait": True}, headers=ADMIN)
    assert reload.status_code == 200 and reload.json()["ok"]
    assert admin.post("/api/v1/models/reload", json={"scope": "cluster"}).status_code == 401
    assert "modelcache_cache_hits_total" in admin.get("/metrics").text
    assert admin.get("/api/v1/cluster").status_code == 200
    assert admin.get("/docs").status_code == 200
    r = admin.post("/api/v1/models/m/predict", json={"features": ROW})
    assert r.status_code == 200 and r.headers["x-modelcache-route"] in ("cold", "hot")
