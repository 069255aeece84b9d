"""coordinator.client: the admin API over HTTP, against a real node and canned answers."""

from __future__ import annotations

import httpx
import pytest

from coordinator.client import (
    AdminApiError,
    AdminAuthError,
    AdminClient,
    AdminRequestInvalid,
    AdminUnreachable,
)
from coordinator.errors import ClusterUnavailable
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import free_port


def test_changes_and_reads_against_real_nodes(cluster, publish) -> None:
    publish("m", "1.0")
    publish("m", "2.0")
    nodes = cluster(2)
    with AdminClient(nodes[0].url, CLUSTER_TOKEN) as client:
        doc = client.pin("m", "1.0", wait=True, timeout_s=20)
        assert doc["ok"] and {a["version"] for a in doc["acks"]} == {"1.0"} and len(doc["acks"]) == 2
        assert client.pins() == {"m": "1.0"}
        assert client.reload("m", wait=True, timeout_s=20)["change"]["kind"] == "reload"
        assert client.unpin("m", wait=True, timeout_s=20)["ok"]
        assert client.cluster()["pins"] == {} and len(client.cluster()["nodes"]) == 2
        assert [m["model_type"] for m in client.models()] == ["m"]
        with pytest.raises(AdminApiError, match=r"no version '7\.0'") as missing:
            client.pin("m", "7.0")
        assert missing.value.status == 404
    with AdminClient(nodes[0].url, "wrong") as client, pytest.raises(AdminAuthError, match="refused"):
        client.pin("m", "1.0")
    with AdminClient(nodes[0].url) as client, pytest.raises(AdminAuthError, match="no admin token") as e:
        client.unpin("m")
    assert e.value.status == 401


def test_nobody_listening_is_unreachable() -> None:
    with AdminClient(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(AdminUnreachable) as e:
        client.cluster()
    assert isinstance(e.value, ClusterUnavailable) and "cannot reach" in str(e.value)


def _canned(status: int, body: bytes, content_type: str = "application/json") -> AdminClient:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return AdminClient("http://lb", "t", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (502, b"<html>Bad Gateway</html>", AdminUnreachable, "502"),
        (503, b'{"error": "Redis is unreachable", "code": "cluster_unavailable"}', AdminUnreachable, "Redis"),
        (422, b'{"error": "invalid model type", "code": "invalid_name"}', AdminRequestInvalid, "invalid"),
        (
            501,
            b'{"error": "this node runs without Redis", "code": "not_available"}',
            AdminApiError,
            "without",
        ),
        (200, b"not json", AdminApiError, "without JSON"),
    ],
)
def test_error_answers_become_one_exception_each(
    status: int, body: bytes, error: type[Exception], says: str
) -> None:
    with _canned(status, body) as client, pytest.raises(error, match=says):
        client.cluster()


def test_a_wait_that_outlives_its_deadline_says_the_outcome_is_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = AdminClient("http://lb", "t", transport=httpx.MockTransport(handler))
    with client, pytest.raises(AdminApiError, match="outcome unknown") as e:
        client.reload("m", wait=True, timeout_s=1)
    assert e.value.code == "client_timeout"
