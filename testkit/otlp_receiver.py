"""A real OTLP trace receiver process: OTLP/HTTP (protobuf, POST /v1/traces) and OTLP/gRPC.

What a collector does on the receiving side, small enough to read: each exported span is
decoded with opentelemetry-proto and appended as one JSON line to a file the test (or the
benchmark) reads. Run it as its own process, as a node meets a collector:

    python -m testkit.otlp_receiver --http-port 4318 --grpc-port 4317 --out spans.jsonl

`OtlpReceiver` starts one on free loopback ports and stops it by its PID.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from coordinator.processes import free_port, stop_process


class OtlpReceiver:
    """`python -m testkit.otlp_receiver` on free loopback ports; its spans as dicts."""

    def __init__(self, directory: Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"http://127.0.0.1:{self.grpc_port}"
        self.out = directory / f"spans-{self.http_port}.jsonl"
        self.log = directory / f"receiver-{self.http_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def endpoint(self, protocol: str) -> dict[str, str]:
        """The OTEL_* variables that point a node's exporter here over `protocol`."""
        url = self.grpc_url if protocol == "grpc" else self.http_url
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}

    def start(self, timeout: float = 20.0) -> OtlpReceiver:
        args = [sys.executable, "-m", "testkit.otlp_receiver", "--out", str(self.out)]
        args += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the OTLP receiver exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.http_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            deadline.wait(0.05)
        raise TimeoutError(f"the OTLP receiver did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far (each with `protocol`: http or grpc)."""
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


# -- the receiving process ----------------------------------------------------------
def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _rows(request: Any, protocol: str) -> list[dict[str, Any]]:
    rows = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                rows.append(
                    {
                        "protocol": protocol,
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                    }
                )
    return rows


class _Sink:
    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self.lock, self.path.open("a") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)


def serve(host: str, http_port: int, grpc_port: int, out: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc

    sink = _Sink(out)

    class Http(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200 if self.path == "/healthz" else 404, b"ok", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self._answer(404, b"", "text/plain")
                return
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            sink.write(_rows(pb.ExportTraceServiceRequest.FromString(body), "http"))
            self._answer(200, pb.ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass  # one line per export would drown the log

    class Traces(pb_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            sink.write(_rows(request, "grpc"))
            return pb.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    server.add_insecure_port(f"{host}:{grpc_port}")
    server.start()
    httpd = ThreadingHTTPServer((host, http_port), Http)
    print(f"OTLP receiver: http {host}:{http_port}, grpc {host}:{grpc_port}, spans to {out}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    serve(args.host, args.http_port, args.grpc_port, args.out)


if __name__ == "__main__":
    main()
