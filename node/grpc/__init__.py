"""The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`.

`node.grpc.server.GrpcServer` serves it from the node process on
MODELCACHE_GRPC_PORT over the node's own V2 handler, service and cache
(node.grpc.servicer). The protobuf modules beside the .proto are generated
(`python -m node.grpc.generate`). Importing this package imports nothing else,
so a client can use the generated modules without the server's dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GrpcServer"]


def __getattr__(name: str) -> Any:
    if name == "GrpcServer":
        from node.grpc.server import GrpcServer

        return GrpcServer
    raise AttributeError(name)
