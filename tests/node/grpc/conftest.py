"""A real node with its gRPC port, and a client generated from node/grpc's .proto.

The test process imports node.grpc's generated modules; tritonclient.grpc (whose
generated modules declare the same `inference.*` protobuf symbols, which one
process cannot hold twice) runs in a subprocess (tests/node/grpc/triton_client.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import NodeProcess, free_port

TOKEN = "grpc-token"


@dataclass
class GrpcNode:
    node: NodeProcess
    grpc_port: int
    stub: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@pytest.fixture
def grpc_node(
    registry: Registry, node_process: Callable[..., NodeProcess]
) -> Iterator[Callable[..., GrpcNode]]:
    """grpc_node(**env): a node on the test registry with gRPC on a free port, and a stub for it."""
    channels: list[grpc.Channel] = []

    def _start(**env: str) -> GrpcNode:
        port = free_port()
        settings = {"MODELCACHE_GRPC_PORT": str(port), "MODELCACHE_ADMIN_TOKEN": TOKEN, **env}
        node = node_process(registry.root, **settings)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        return GrpcNode(node, port, pb_grpc.GRPCInferenceServiceStub(channel))

    yield _start
    for channel in channels:
        channel.close()
