"""What every route shares (node.http.common, node.http.middleware): the error shape and body limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from coordinator.registry import Registry
from node.app import build_app
from node.settings import NodeSettings
from tests.helpers import PublishFn, corrupt
from tests.node.http.support import ROW, assert_error_shape, v2_input


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/api/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"


def test_body_too_large(client: TestClient) -> None:
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": [0.123456789] * 1000})
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large" and "4096 bytes" in r.json()["error"]


def test_chunked_body_too_large(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model_type": "churn", "features": ['
        for _ in range(2000):
            yield b"0.5,"
        yield b"0.5]}"

    r = client.post("/api/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_wrong_method_answer_the_error_shape(client: TestClient) -> None:
    assert_error_shape(client.get("/api/v1/nope"), 404, "not_found")
    assert_error_shape(client.post("/v2/models/churn/nope", json={}), 404, "not_found")
    # A trailing slash is not redirected (a 307 would send the body to the client's Host header).
    slash = client.post(
        "/api/v1/models/reload/", json={}, headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert_error_shape(slash, 404, "not_found")
    r = client.get("/api/v1/predict")
    assert_error_shape(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error_shape(client.delete("/healthz"), 405, "method_not_allowed")


def test_unexpected_exception_is_a_500_without_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom at /srv/secret/place")

    monkeypatch.setattr(client.app.state.service, "get", broken)
    r = client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW})
    body = assert_error_shape(r, 500, "internal_error")
    assert "secret" not in r.text and "boom" not in body["error"]
    assert r.headers["x-modelcache-node"] == "n1"
    assert "boom at /srv/secret/place" in caplog.text and "Traceback" in caplog.text


DEEP = b'{"model_type": "churn", "features": ' + b"[" * 1500 + b"]" * 1500 + b"}"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "fragment"),
    [
        (DEEP, {}, 422, "invalid_input", "depth limit"),
        (b'{"model_type": "churn", "features": [NaN, 1, 2, 3]}', {}, 422, "invalid_input", "not valid JSON"),
        (b'{"model_type": "churn", "features": [Infinity, 1, 2, 3]}', {}, 422, "invalid_input", "JSON"),
        (b'{"model_type": "churn", "features": [1e400, 1, 2, 3]}', {}, 422, "invalid_input", "infinity"),
        # Finite as a double, infinite as the float32 the model takes.
        (b'{"model_type": "churn", "features": [1e300, 1, 2, 3]}', {}, 422, "invalid_input", "finite"),
        (
            b'{"model_type": "churn", "features": [1' + b"0" * 40 + b", 1, 2, 3]}",
            {},
            422,
            "invalid_input",
            "",
        ),
        (b"", {}, 422, "invalid_input", "empty"),
        (b"[1, 2]", {}, 422, "invalid_input", "invalid request"),
        (b'"churn"', {}, 422, "invalid_input", "invalid request"),
        (b'{"model_type": "churn", "features": [1, 2, 3, 4]}', {"Content-Type": "text/plain"}, 415, None, ""),
        (b"model_type=churn", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None, "JSON"),
        (b"\x1f\x8b\x08\x00", {"Content-Encoding": "gzip"}, 415, None, "uncompressed"),
        (b'{"model_type": "\xc3\xa9t\xc3\xa9", "features": [1, 2, 3, 4]}', {}, 422, "invalid_name", ""),
        (
            b'{"model_type": "churn", "features": [1, 2, 3, 4], "routing_key": 7}',
            {},
            422,
            "invalid_input",
            "",
        ),
        (b'{"model_type": "churn", "features": {"f0": 1, "f1": 2}}', {}, 422, "invalid_input", "missing"),
        (b'{"model_type": "ch\xffrn", "features": [1, 2, 3, 4]}', {}, 422, "invalid_input", "JSON"),
        (b'{"model_type": "churn", "features": [1, 2, 3, 4], "version": 1}', {}, 422, "invalid_input", ""),
    ],
    ids=[
        "deep-nesting",
        "nan-literal",
        "infinity-literal",
        "1e400",
        "beyond-float32",
        "huge-int",
        "empty",
        "top-level-list",
        "top-level-string",
        "content-type-text",
        "content-type-form",
        "gzip",
        "unicode-model-name",
        "unknown-field",
        "missing-feature-names",
        "invalid-utf8",
        "version-not-a-string",
    ],
)
def test_bad_bodies_are_4xx_in_the_error_shape(
    client: TestClient, content: bytes, headers: dict, status: int, code: str | None, fragment: str
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    r = client.post("/api/v1/predict", content=content, headers=headers)
    body = assert_error_shape(r, status, code)
    assert fragment in body["error"]


def test_big_bodies_are_decoded_off_the_event_loop(
    registry: Registry, publish: PublishFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import node.http.common as common

    publish("churn", "1.0.0")
    threads: list[bool] = []
    real = common.decode_body

    def spy(*args: object) -> object:
        try:
            asyncio.get_running_loop()
            threads.append(False)
        except RuntimeError:  # no loop in this thread: a worker
            threads.append(True)
        return real(*args)

    monkeypatch.setattr(common, "decode_body", spy)
    settings = NodeSettings(registry=registry.root, max_batch=10_000, max_body_bytes=1 << 20)
    with TestClient(build_app(settings)) as c:
        small = c.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 10})
        big = c.post("/api/v1/batch_predict", json={"model_type": "churn", "instances": [ROW] * 5000})
    assert small.status_code == big.status_code == 200
    assert threads == [False, True]  # inline when small, in asyncio's worker thread when big


def test_errors_do_not_reveal_registry_paths_or_digests(
    client: TestClient, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    import re

    corrupt(registry, registry.metadata("churn", "1.0.0"))  # checksum mismatch
    fraud = registry.metadata("fraud", "1.0.0")
    registry.artifact_path(fraud).unlink()  # "cannot read <path>"
    bad_meta = registry.root / "churn" / "1.1.0" / "metadata.json"
    bad_meta.write_text("{broken")  # MetadataError names the file
    responses = [
        client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.0.0", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "churn", "version": "1.1.0", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "churn", "features": ROW}),
        client.post("/api/v1/predict", json={"model_type": "fraud", "features": ROW}),
        client.get("/api/v1/models/churn/versions/1.1.0"),
        client.get("/v2/models/churn/versions/1.1.0"),
        client.post("/v2/models/churn/versions/1.0.0/infer", json={"inputs": [v2_input()]}),
        client.post("/v2/models/fraud/infer", json={"inputs": [v2_input()]}),
    ]
    root = str(registry.root)
    for r in responses:
        assert r.status_code in (503, 422, 404), r.text
        assert root not in r.text and "metadata.json" not in r.text, r.text
        assert not re.search(r"[0-9a-f]{12}", r.json()["error"]), r.text
        assert r.json()["error"] and r.json()["code"]
    assert "churn 1.0.0" in responses[0].json()["error"] and "republish" in responses[0].json()["error"]
    assert "churn 1.1.0" in responses[1].json()["error"]
    assert "fraud 1.0.0" in responses[3].json()["error"]
    assert root in caplog.text  # the operator's log keeps the detail


@pytest.mark.parametrize("path", ["/api/v1/batch_predict", "/api/v1/models/churn/batch_predict"])
def test_an_over_limit_batch_is_refused_on_its_bytes_before_it_is_parsed(
    client: TestClient, path: str
) -> None:
    # Six rows (the limit is 5) and then junk: parsed first, this is a 422 for invalid JSON;
    # counted on its bytes first, a 413 that never reaches the parser (a flood of refused
    # batches costs a few byte scans each, not a parse that builds every row).
    head = (
        b'{"model_type": "churn", "instances": ['
        if path.endswith("/api/v1/batch_predict")
        else b'{"instances": ['
    )
    body = head + b"[1, 2, 3, 4]," * 6 + b" this is not JSON"
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error_shape(r, 413, "batch_too_large")
    assert "batch of 6 instances exceeds the limit of 5" in r.json()["error"]


@pytest.mark.parametrize(
    "doc",
    [
        {"instances": [[1, 2], [3, None]]},
        {"model_type": "a[b{c", "version": "1.0", "instances": [{"x[": 1, 'y{"': 2}] * 5},
        {"instances": [{"\\[": 1}, {"\\\\{": None}], "routing_key": "[[[[{{{{"},
        {"instances": []},
    ],
)
def test_counting_rows_on_the_bytes_is_exact_for_a_valid_body(doc: dict) -> None:
    import json

    from node.http.common import refuse_big_batch, rows_in_batch

    raw = json.dumps(doc).encode()
    assert rows_in_batch(raw) == len(doc["instances"])
    refuse_big_batch(raw, len(doc["instances"]))  # at the limit: never refused on brackets in strings
