"""Admin and cluster routes (node.http.admin): the token, reload, pins, bounds on waits."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn
from tests.node.http.support import ADMIN, ROW, assert_error_shape


def test_admin_auth(client: TestClient) -> None:
    body = {"scope": "node"}
    r = client.post("/api/v1/models/reload", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/v1/models/reload", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = client.post("/api/v1/models/reload", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ok"] is True


def test_admin_disabled_without_token(registry: Registry, publish: PublishFn) -> None:
    publish("churn", "1.0.0")
    with TestClient(build_app(NodeSettings(registry=registry.root))) as c:
        r = c.post("/api/v1/models/reload", json={"scope": "node"}, headers=ADMIN)
        assert r.status_code == 403 and "MODELCACHE_ADMIN_TOKEN" in r.json()["error"]


def test_node_reload_swaps_to_new_version(client: TestClient, publish: PublishFn) -> None:
    client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    publish("churn", "1.2.0")
    r = client.post("/api/v1/models/reload", json={"model_type": "churn", "scope": "node"}, headers=ADMIN)
    [ack] = r.json()["acks"]
    assert (ack["node_id"], ack["outcome"], ack["version"], ack["previous"]) == ("n1", "ok", "1.2.0", "1.1.0")
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}).json()
    assert (r["version"], r["cached"]) == ("1.2.0", True)


def test_cluster_routes_without_redis_answer_501(client: TestClient) -> None:
    assert client.get("/api/v1/cluster").status_code == 501
    r = client.put("/api/v1/pins/churn", json={"version": "1.0.0"}, headers=ADMIN)
    assert r.status_code == 501 and "MODELCACHE_REDIS_URL" in r.json()["error"]
    assert client.delete("/api/v1/pins/churn", headers=ADMIN).status_code == 501
    r = client.post("/api/v1/models/reload", json={"scope": "cluster"}, headers=ADMIN)
    assert r.status_code == 501
    assert client.get("/api/v1/pins").json() == {"pins": {}}
    assert client.put("/api/v1/pins/churn", json={"version": "1.0.0"}).status_code == 401


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "121", "1e308", "soon"])
def test_timeout_query_is_validated_like_a_body(client: TestClient, value: str) -> None:
    r = client.delete(f"/api/v1/pins/churn?timeout_s={value}", headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")
    assert "timeout_s" in r.json()["error"]


def test_timeout_query_in_bounds_passes_validation(client: TestClient) -> None:
    r = client.delete("/api/v1/pins/churn?timeout_s=120", headers=ADMIN)
    assert_error_shape(r, 501, "not_implemented")  # validated, then: no cluster on this node


@pytest.mark.parametrize("value", ["nan", "inf", -1, 0, 121, 1e308])
def test_timeout_in_bodies_is_bounded_and_finite(client: TestClient, value: object) -> None:
    r = client.put("/api/v1/pins/churn", json={"version": "1.0.0", "timeout_s": value}, headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")
    r = client.post("/api/v1/models/reload", json={"scope": "node", "timeout_s": value}, headers=ADMIN)
    assert_error_shape(r, 422, "invalid_input")


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/api/v1/models/reload", b'{"scope": "everywhere", "bogus": [1, 2]}'),
        ("POST", "/api/v1/models/reload", b"{not json"),
        ("PUT", "/api/v1/pins/churn", b'{"version": 7}'),
        ("DELETE", "/api/v1/pins/churn?timeout_s=nan", b""),
        ("POST", "/v2/repository/models/churn/load", b"{not json"),
        ("POST", "/v2/repository/models/churn/load", b'{"parameters": [1]}'),
    ],
)
def test_admin_token_is_checked_before_the_body(
    client: TestClient, method: str, path: str, content: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    r = client.request(method, path, content=content, headers=headers)
    assert_error_shape(r, 401, "unauthorized")
    r = client.request(method, path, content=content, headers={**headers, "Authorization": "Bearer wrong"})
    assert_error_shape(r, 403, "forbidden")


@pytest.mark.parametrize(
    "body",
    [
        {"version": "1.0.0", "wait": "yes"},
        {"version": "1.0.0", "timeout_s": "5"},
        {"version": "1.0.0", "timeout_s": True},
        {"version": "1.0.0", "wait": 1},
    ],
)
def test_admin_bodies_take_json_types_not_lookalikes(client: TestClient, body: dict) -> None:
    r = client.put("/api/v1/pins/churn", json=body, headers=ADMIN)
    assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text


def test_reload_of_a_version_needs_its_model_type(client: TestClient) -> None:
    r = client.post("/api/v1/models/reload", json={"scope": "node", "version": "1.0.0"}, headers=ADMIN)
    assert r.status_code == 422 and "version needs model_type" in r.json()["error"], r.text
