"""The gRPC frontend of the compose and Kubernetes renderings (coordinator/lb.py), through a real
HAProxy in front of a real node: compose's file as shipped (loopback addresses swapped in), and
the Kubernetes door's allow list (RepositoryModelLoad/Unload are admin, refused at the door)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from coordinator.haproxy_process import INSTALL, HAProxy, check_config, find_haproxy
from coordinator.lb import GRPC_MODEL_HEADER
from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import NodeProcess, PublishFn, free_port, require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TOKEN = "grpc-deploy-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Node:
    rest: str
    grpc: str


@pytest.fixture
def grpc_node(
    registry: Registry, publish: PublishFn, node_process: Callable[..., NodeProcess]
) -> Iterator[Node]:
    """One node with gRPC on a free port and the model `churn` published."""
    publish("churn", "1.0.0")
    port = free_port()
    node = node_process(registry.root, MODELCACHE_GRPC_PORT=str(port), MODELCACHE_ADMIN_TOKEN=TOKEN)
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    yield Node(f"127.0.0.1:{node.port}", target)


def infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> str:
    """The node that answered (the response's node_id parameter)."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=[1, 4])
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[np.zeros((1, 4), np.float32).tobytes()]
    )
    response = stub.ModelInfer(request, metadata=((GRPC_MODEL_HEADER, model),), timeout=30)
    return response.parameters["node_id"].string_param


def on_loopback(cfg: str, rest_port: int, grpc_port: int, nodes: dict[str, str]) -> str:
    """Compose's config with loopback binds and `nodes` ("nodeN:port" -> "127.0.0.1:port")."""
    cfg = cfg.replace("bind :8080\n", f"bind 127.0.0.1:{rest_port}\n")
    cfg = cfg.replace("bind :8081 proto h2", f"bind 127.0.0.1:{grpc_port} proto h2")
    cfg = cfg.replace("ipv4@127.0.0.1:9999", f"ipv4@127.0.0.1:{free_port()}")  # the runtime API
    return re.sub(r"\bnode\d:80[05]0\b", lambda m: nodes[m.group(0)], cfg)


def test_compose_and_k8s_renderings_have_a_grpc_frontend_that_haproxy_accepts(tmp_path: Path) -> None:
    binary = require_binary("haproxy", INSTALL)
    compose = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    k8s = yaml.safe_load((DEPLOY / "k8s" / "lb-config.yaml").read_text())["data"]["haproxy.cfg"]
    for text, bind in ((compose, ":8081"), (k8s, ":8082")):
        assert f"bind {bind} proto h2" in text and "backend nodes_grpc" in text
        conf = tmp_path / "haproxy.cfg"
        conf.write_text(text)
        out = check_config(binary, conf)
        assert out.returncode == 0, out.stdout + out.stderr
    for i in (1, 2, 3):
        assert f"server node{i} node{i}:8050 resolvers dns" in compose
        assert f"proto h2 track nodes/node{i}" in compose


@pytest.mark.skipif(find_haproxy() is None, reason="haproxy not installed")
def test_compose_grpc_frontend_serves_a_real_node_and_follows_rest_health(grpc_node: Node) -> None:
    """node1 is a real node; node2 and node3 are down, and their gRPC servers follow."""
    rest_port, grpc_port = free_port(), free_port()
    nodes = {"node1:8000": grpc_node.rest, "node1:8050": grpc_node.grpc}
    for name in ("node2", "node3"):
        nodes[f"{name}:8000"] = f"127.0.0.1:{free_port()}"
        nodes[f"{name}:8050"] = f"127.0.0.1:{free_port()}"
    lb = HAProxy([grpc_node.rest], rest_port)
    lb.conf.write_text(
        on_loopback((DEPLOY / "haproxy" / "haproxy.cfg").read_text(), rest_port, grpc_port, nodes)
    )
    with lb, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        deadline = time.monotonic() + 15
        while not all(f"nodes_grpc/{n} is DOWN via nodes/{n}" in lb.error_log() for n in ("node2", "node3")):
            assert time.monotonic() < deadline, lb.error_log()
            time.sleep(0.1)
        assert "nodes_grpc/node1 is DOWN" not in lb.error_log()
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert len({infer(stub, "churn") for _ in range(5)}) == 1


@pytest.mark.skipif(find_haproxy() is None, reason="haproxy not installed")
def test_the_public_grpc_door_serves_inference_and_refuses_loading_even_with_the_token(
    grpc_node: Node,
) -> None:
    lb = HAProxy([grpc_node.rest], free_port(), grpc=(free_port(), [grpc_node.grpc]), grpc_public=True)
    load = pb.RepositoryModelLoadRequest(model_name="churn")
    with (
        lb,
        grpc.insecure_channel(f"127.0.0.1:{lb.grpc_port}") as door,
        grpc.insecure_channel(grpc_node.grpc) as direct,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(door)
        assert infer(stub, "churn")
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert "churn" in {m.name for m in index.models}
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(load, metadata=ADMIN, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The node itself accepts the same call: the refusal is the door's.
        pb_grpc.GRPCInferenceServiceStub(direct).RepositoryModelLoad(load, metadata=ADMIN, timeout=30)
