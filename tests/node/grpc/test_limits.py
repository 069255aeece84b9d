"""The gRPC door's bounds on a real node (node.grpc.limits): calls in progress, connections,
silent and idle connections. Beyond a bound the answer is at once and clear, never a hang."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest

from coordinator.registry import Registry
from node.grpc import grpc_predict_v2_pb2 as pb
from node.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.node.grpc.conftest import GrpcNode

INFER = "/inference.GRPCInferenceService/ModelInfer"
# Each channel its own connection (grpc shares one per target in a process by default): a call
# beyond a connection's stream limit waits on its client, and the bound under test is the node's.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@contextmanager
def slow_clients(target: str, n: int) -> Iterator[None]:
    """`n` calls that sent their headers and never send their message (a slow or stuck client)."""
    release = threading.Event()

    def silence() -> Iterator[bytes]:
        release.wait(30)
        return
        yield b""  # pragma: no cover - a generator that never yields

    channels = [grpc.insecure_channel(target, options=OWN_CONNECTION) for _ in range(n)]
    calls = [ch.stream_unary(INFER).future(silence(), timeout=30) for ch in channels]
    try:
        yield
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()


def live(target: str, timeout: float = 5.0) -> grpc.StatusCode:
    """ServerLive over a fresh connection: OK, or the status it was refused with."""
    with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_calls_beyond_the_limit_are_refused_at_once_and_slow_clients_under_it_block_nobody(
    registry: Registry, grpc_node: Callable[..., GrpcNode]
) -> None:
    node = grpc_node(MODELCACHE_GRPC_MAX_CONCURRENT_RPCS="3")
    with slow_clients(node.target, 2):
        time.sleep(0.3)  # the server has taken both calls
        assert live(node.target) == grpc.StatusCode.OK  # two stuck calls, one slot left
    with slow_clients(node.target, 3):
        time.sleep(0.3)
        started = time.monotonic()
        assert live(node.target, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 5  # refused, not left waiting for its deadline
    # The slots come back when the slow clients go.
    assert wait_for(lambda: live(node.target) == grpc.StatusCode.OK, 5)


def test_connections_beyond_the_limit_are_closed_and_silent_ones_dropped_after_the_header_timeout(
    registry: Registry, grpc_node: Callable[..., GrpcNode]
) -> None:
    node = grpc_node(MODELCACHE_MAX_CONNECTIONS="4", MODELCACHE_HEADER_TIMEOUT_S="1")
    # The fixture's own channel holds one connection; three silent ones take the rest.
    silent = [socket.create_connection(("127.0.0.1", node.grpc_port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        assert live(node.target, timeout=10) == grpc.StatusCode.UNAVAILABLE  # closed at once
        assert time.monotonic() - started < 5
        for sock in silent:  # the server drops each after HEADER_TIMEOUT_S: the peer sees EOF
            while sock.recv(4096):
                pass
        assert time.monotonic() - started < 8
    finally:
        for sock in silent:
            sock.close()
    assert wait_for(lambda: live(node.target) == grpc.StatusCode.OK, 5)


def test_an_idle_connection_is_closed_after_keep_alive_s(
    registry: Registry, grpc_node: Callable[..., GrpcNode]
) -> None:
    node = grpc_node(MODELCACHE_KEEP_ALIVE_S="1")
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(node.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        channel.subscribe(states.append)
        # READY until the server sends GOAWAY for the idle connection; then the channel goes IDLE.
        assert wait_for(lambda: grpc.ChannelConnectivity.IDLE in states, 8), states
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live  # a client reconnects by itself


@pytest.mark.parametrize("workers", ["0", "4"], ids=["aio", "threads"])
def test_both_flavours_refuse_beyond_the_limit(
    registry: Registry, grpc_node: Callable[..., GrpcNode], workers: str
) -> None:
    node = grpc_node(MODELCACHE_GRPC_MAX_CONCURRENT_RPCS="2", MODELCACHE_GRPC_WORKERS=workers)
    with slow_clients(node.target, 2):
        time.sleep(0.3)
        assert live(node.target, timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_for(lambda: live(node.target) == grpc.StatusCode.OK, 5)
