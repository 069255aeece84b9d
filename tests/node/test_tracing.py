"""Tracing end to end: real node processes exporting to a real OTLP receiver process.

The receiver (testkit/otlp_receiver.py) decodes what the node's exporter sends over
OTLP/HTTP or OTLP/gRPC, as a collector would; nothing here looks at an in-memory exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from coordinator.processes import free_port
from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from testkit.otlp_receiver import OtlpReceiver
from tests.conftest import CLUSTER_TOKEN
from tests.helpers import NodeProcess, PublishFn, eventually

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
PREDICT_ROUTE = "/api/v1/models/{model_type}/predict"
STAGES = {"parse", "resolve", "batch.wait", "predict", "serialize"}
# Exports leave within ~0.1 s, so a test waits for them for a bounded time.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[OtlpReceiver]:
    started = OtlpReceiver(tmp_path).start()
    yield started
    started.stop()


def traced_node(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    receiver: OtlpReceiver,
    protocol: str,
    **env: str,
) -> NodeProcess:
    settings = {
        "MODELCACHE_TRACING": "true",
        "MODELCACHE_ACCESS_LOG": "true",
        "MODELCACHE_LOG_FORMAT": "json",
        **FAST_EXPORT,
        **receiver.endpoint(protocol),
        **env,
    }
    return node_process(registry.root, **settings)


def of_trace(receiver: OtlpReceiver, trace_id: str = TRACE_ID) -> list[dict[str, Any]]:
    return [s for s in receiver.spans() if s["trace_id"] == trace_id]


def access_lines(node: NodeProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in node.log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "modelcache.access"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_request_with_a_traceparent_is_traced_at_the_receiver_and_in_the_access_log(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    receiver: OtlpReceiver,
    protocol: str,
) -> None:
    publish("churn", "1.0.0")
    node = traced_node(node_process, registry, receiver, protocol, OTEL_SERVICE_NAME="scoring")
    url = f"{node.url}/api/v1/models/churn/predict"
    for _ in range(2):  # a miss (with its load), then a hit
        reply = httpx.post(url, json={"features": [1, 2, 3, 4]}, headers={"traceparent": SAMPLED})
        assert reply.status_code == 200

    assert eventually(lambda: len({s["name"] for s in of_trace(receiver)} & {"load", "cache.hit"}) == 2)
    spans = of_trace(receiver)
    assert {s["protocol"] for s in spans} == {"http" if protocol == "http/protobuf" else "grpc"}
    assert {s["service"] for s in spans} == {"scoring"}  # OTEL_SERVICE_NAME
    roots = [s for s in spans if s["name"] == f"POST {PREDICT_ROUTE}"]
    assert len(roots) == 2 and all(r["parent_span_id"] == PARENT_SPAN for r in roots)
    by_id = {s["span_id"]: s for s in spans}
    for root in roots:
        children = {s["name"] for s in spans if s["parent_span_id"] == root["span_id"]}
        assert children >= STAGES
    [load] = [s for s in spans if s["name"] == "load"]
    miss = by_id[load["parent_span_id"]]
    assert miss["name"] == "cache.miss"  # the load is a child of the miss
    assert by_id[miss["parent_span_id"]]["name"] == "resolve"
    [hit] = [s for s in spans if s["name"] == "cache.hit"]
    assert hit["attributes"]["modelcache.model_type"] == "churn"

    predictions = [line for line in access_lines(node) if line["route"] == PREDICT_ROUTE]
    assert len(predictions) == 2 and {line["trace_id"] for line in predictions} == {TRACE_ID}


def test_the_grpc_door_honours_traceparent_metadata(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    receiver: OtlpReceiver,
) -> None:
    publish("churn", "1.0.0")
    grpc_port = free_port()
    traced_node(node_process, registry, receiver, "grpc", MODELCACHE_GRPC_PORT=str(grpc_port))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="input-0",
            datatype="FP32",
            shape=[1, 4],
            contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]),
        )
        stub.ModelInfer(
            pb.ModelInferRequest(model_name="churn", inputs=[tensor]),
            metadata=(("traceparent", SAMPLED),),
            timeout=10,
        )
    name = "inference.GRPCInferenceService/ModelInfer"
    assert eventually(lambda: any(s["name"] == name for s in of_trace(receiver)))
    [root] = [s for s in of_trace(receiver) if s["name"] == name]
    assert root["parent_span_id"] == PARENT_SPAN
    assert {"parse", "resolve", "predict", "serialize"} <= {
        s["name"] for s in of_trace(receiver) if s["parent_span_id"] == root["span_id"]
    }


def test_an_unsampled_traceparent_is_propagated_but_not_recorded(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    receiver: OtlpReceiver,
) -> None:
    """Parent-based sampling: the client said "not sampled", so nothing is exported; the log has the id."""
    publish("churn", "1.0.0")
    node = traced_node(node_process, registry, receiver, "http/protobuf", OTEL_TRACES_SAMPLER_ARG="1.0")
    unsampled = f"00-{TRACE_ID}-{PARENT_SPAN}-00"
    reply = httpx.post(
        f"{node.url}/api/v1/models/churn/predict",
        json={"features": [1, 2, 3, 4]},
        headers={"traceparent": unsampled},
    )
    assert reply.status_code == 200
    # A sampled request after it: once its spans arrived, the unsampled one's would have too.
    other = "1" * 32
    httpx.post(
        f"{node.url}/api/v1/models/churn/predict",
        json={"features": [1, 2, 3, 4]},
        headers={"traceparent": f"00-{other}-{PARENT_SPAN}-01"},
    )
    assert eventually(lambda: bool(of_trace(receiver, other)))
    assert of_trace(receiver) == []
    assert any(line.get("trace_id") == TRACE_ID for line in access_lines(node))


def test_an_admin_change_is_traced_to_each_nodes_apply(
    cluster: Callable[..., list[NodeProcess]],
    publish: PublishFn,
    receiver: OtlpReceiver,
) -> None:
    publish("churn", "1.0.0")
    publish("churn", "1.1.0")
    nodes = cluster(2, MODELCACHE_TRACING="true", **FAST_EXPORT, **receiver.endpoint("http/protobuf"))
    for node in nodes:  # each node serves churn, so the pin is a real swap on both
        assert httpx.post(
            f"{node.url}/api/v1/models/churn/predict", json={"features": [1, 2, 3, 4]}
        ).is_success
    reply = httpx.put(
        f"{nodes[0].url}/api/v1/pins/churn",
        json={"version": "1.0.0", "wait": True},
        headers={"Authorization": f"Bearer {CLUSTER_TOKEN}", "traceparent": SAMPLED},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text

    def applies() -> list[dict[str, Any]]:
        return [s for s in of_trace(receiver) if s["name"] == "apply pin"]

    assert eventually(lambda: len(applies()) == 2)
    [admin] = [s for s in of_trace(receiver) if s["name"] == "PUT /api/v1/pins/{model_type}"]
    assert admin["parent_span_id"] == PARENT_SPAN
    assert {s["attributes"]["modelcache.node_id"] for s in applies()} == {f"node-{n.port}" for n in nodes}
    assert {s["parent_span_id"] for s in applies()} == {admin["span_id"]}
    assert {s["attributes"]["modelcache.outcome"] for s in applies()} == {"ok"}


def test_predictions_succeed_while_the_receiver_is_down(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    receiver: OtlpReceiver,
) -> None:
    """An exporter that cannot export costs log lines, never a request."""
    publish("churn", "1.0.0")
    receiver.stop()
    node = traced_node(node_process, registry, receiver, "http/protobuf", OTEL_TRACES_SAMPLER="always_on")
    with httpx.Client(timeout=10) as client:
        statuses = [
            client.post(
                f"{node.url}/api/v1/models/churn/predict", json={"features": [1, 2, 3, 4]}
            ).status_code
            for _ in range(50)
        ]
    assert statuses == [200] * 50


def test_tracing_off_exports_nothing(
    node_process: Callable[..., NodeProcess],
    registry: Registry,
    publish: PublishFn,
    receiver: OtlpReceiver,
) -> None:
    publish("churn", "1.0.0")
    off = node_process(
        registry.root,
        MODELCACHE_ACCESS_LOG="true",
        MODELCACHE_LOG_FORMAT="json",
        **FAST_EXPORT,
        **receiver.endpoint("http/protobuf"),
    )
    on = traced_node(node_process, registry, receiver, "http/protobuf")
    body = {"features": [1, 2, 3, 4]}
    assert httpx.post(
        f"{off.url}/api/v1/models/churn/predict", json=body, headers={"traceparent": SAMPLED}
    ).is_success
    # The same request to a traced node after it: once its spans arrived, the first one's would have.
    other = f"00-{'2' * 32}-{PARENT_SPAN}-01"
    assert httpx.post(
        f"{on.url}/api/v1/models/churn/predict", json=body, headers={"traceparent": other}
    ).is_success
    assert eventually(lambda: bool(of_trace(receiver, "2" * 32)))
    assert of_trace(receiver) == []
    assert all("trace_id" not in line for line in access_lines(off))


def test_tracing_off_starts_no_exporter_and_imports_no_opentelemetry(
    registry: Registry, publish: PublishFn
) -> None:
    """A node built with tracing off (in a fresh process): no tracing SDK or exporter loaded, no
    span processor thread."""
    publish("churn", "1.0.0")
    script = f"""
import sys, threading
OURS = ("node.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
from fastapi.testclient import TestClient
from node.app import build_app
from node.settings import NodeSettings
app = build_app(NodeSettings(registry={str(registry.root)!r}, grpc_port=0))
with TestClient(app) as client:
    reply = client.post("/api/v1/models/churn/predict", json={{"features": [1, 2, 3, 4]}},
                        headers={{"traceparent": {SAMPLED!r}}})
    assert reply.status_code == 200, reply.text
    # FastAPI itself imports opentelemetry's API when it is installed; the SDK's tracing,
    # the exporters and node.otel are what a traced node loads.
    print(sorted(m for m in sys.modules if m.startswith(OURS)))
    print(sorted(t.name for t in threading.enumerate() if "otel" in t.name.lower()))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout


def test_tracing_without_the_extra_names_the_extra(tmp_path: Path) -> None:
    """MODELCACHE_TRACING=true on a core install: exit 2 with one sentence, not a traceback."""
    script = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.sdk.trace", "opentelemetry.sdk.resources"):
    sys.modules[name] = None  # what an install without modelcache[otel] looks like to an import
from node.__main__ import main
sys.exit(main(["--registry", sys.argv[1], "--tracing", "--grpc-port", "0"]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "modelcache[otel]" in out.stderr and "Traceback" not in out.stderr
