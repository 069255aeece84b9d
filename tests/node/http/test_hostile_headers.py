"""Hostile `traceparent` and `Accept` headers, and a collector that never answers: never a 500."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from coordinator.registry import Registry
from tests.helpers import NodeProcess, PublishFn

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
JUNK_TRACEPARENTS = [
    "x" * 8000,
    f"00-{TRACE_ID.upper()}-00F067AA0BA902B7-01",
    f"ff-{TRACE_ID}-00f067aa0ba902b7-01",
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
    f"00-{TRACE_ID}-" + "0" * 16 + "-01",
    f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",
    f"01-{TRACE_ID}-00f067aa0ba902b7-01-" + "a" * 4000,
    f"00-{TRACE_ID}-00f067aa0ba902b7-zz",
    "\u00e9\u00e9-" + TRACE_ID,
]
JUNK_ACCEPTS = [
    "application/openmetrics-text; version=abc",
    "text/plain; version=x.y",
    "text/plain; version=1..0",
    "application/openmetrics-text; version=1.0.0; escaping=bogus",
    "*/*;q=junk," * 500,
    ";;;,,,=",
]


def test_junk_trace_headers_and_accept_headers_never_get_a_500(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    # Tracing on, its collector a port that accepts connections (the backlog) and never answers.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
    try:
        node = node_process(
            registry.root,
            MODELCACHE_TRACING="true",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with httpx.Client(base_url=node.url, timeout=10) as client:
            for value in JUNK_TRACEPARENTS:
                reply = client.post(
                    "/api/v1/models/churn/predict",
                    json={"features": [1, 2, 3, 4]},
                    headers={"traceparent": value.encode("latin-1"), "tracestate": value.encode("latin-1")},
                )
                assert reply.status_code == 200, (value[:40], reply.text[:200])
            many = [("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01")] * 50
            reply = client.post("/api/v1/models/churn/predict", json={"features": [1, 2, 3, 4]}, headers=many)
            assert reply.status_code == 200
            for accept in JUNK_ACCEPTS:
                scraped = client.get("/metrics", headers={"Accept": accept})
                assert scraped.status_code == 200, (accept[:60], scraped.text[:200])
                assert "modelcache_http_request_seconds" in scraped.text
        started = time.monotonic()
        node.stop()  # the exporter's flush at shutdown is bounded, the collector silent or not
        assert node.proc is not None and node.proc.returncode is not None
        assert time.monotonic() - started < 30
    finally:
        hole.close()
