"""The committed generated modules match node/grpc's .proto (regenerated here with grpcio-tools)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from node.grpc import generate
from node.grpc import grpc_predict_v2_pb2 as pb

pytest.importorskip("grpc_tools")


def _serialized_file(source: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto a generated _pb2 module registers (its AddSerializedFile literal)."""
    literal = re.search(r"AddSerializedFile\((b'.*?')\)\n", source, re.S)
    assert literal is not None
    # A Python bytes literal written by protoc: evaluate it as one, nothing else.
    data = eval(literal.group(1), {"__builtins__": {}})
    return descriptor_pb2.FileDescriptorProto.FromString(data)


def test_committed_modules_are_what_the_proto_generates(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = (tmp_path / "grpc_predict_v2_pb2.py").read_text()
    committed = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(committed)
    assert _serialized_file(fresh) == committed, "run `python -m node.grpc.generate` and commit the result"

    methods = re.compile(r"'/inference\.GRPCInferenceService/(\w+)'")
    fresh_grpc = (tmp_path / "grpc_predict_v2_pb2_grpc.py").read_text()
    ours = (generate.PACKAGE_DIR / "grpc_predict_v2_pb2_grpc.py").read_text()
    assert sorted(set(methods.findall(fresh_grpc))) == sorted(set(methods.findall(ours)))


def test_the_service_is_the_open_inference_protocol_with_the_repository_extension() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    # The wire numbers tritonclient sends (Triton's grpc_service.proto).
    request = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert (request["inputs"].number, request["raw_input_contents"].number) == (5, 7)
    load = pb.RepositoryModelLoadRequest.DESCRIPTOR.fields_by_name
    assert (load["repository_name"].number, load["model_name"].number, load["parameters"].number) == (1, 2, 3)
