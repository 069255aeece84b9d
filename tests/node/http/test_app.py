"""The assembled app (node.http.app): OpenAPI describes every route."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_openapi_documents_every_route_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/predict",
        "/api/v1/batch_predict",
        "/api/v1/models/{model_type}/predict",
        "/api/v1/models",
        "/api/v1/models/{model_type}/versions/{version}",
        "/api/v1/models/reload",
        "/api/v1/pins",
        "/api/v1/pins/{model_type}",
        "/api/v1/cache/stats",
        "/api/v1/cluster",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
        for op in paths[path].values():
            assert op.get("description") or op.get("summary"), path
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["examples"]
    assert schemas["BatchRequest"]["examples"]
    assert "404" in paths["/api/v1/predict"]["post"]["responses"]
