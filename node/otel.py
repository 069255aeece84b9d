"""Set up OpenTelemetry for a node (`MODELCACHE_TRACING=true`), from the standard `OTEL_*` variables.

Imported only when tracing is on, so a core install (without `modelcache[otel]`) never
needs the packages; with tracing on and the extra missing, start-up fails with a
sentence naming the extra.

What the SDK reads itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the
service name defaults to `modelcache` here), `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._HEADERS`, `..._TIMEOUT`, `..._INSECURE`,
`OTEL_BSP_*` (the batch span processor), `OTEL_TRACES_SAMPLER` and
`OTEL_TRACES_SAMPLER_ARG`. What is chosen here:

- the exporter, by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`:
  `http/protobuf` (default, as the specification says) or `grpc`; `OTEL_TRACES_EXPORTER`
  `otlp` (default), `console` or `none`;
- the sampler when `OTEL_TRACES_SAMPLER` is unset: parent-based, recording `DEFAULT_RATIO`
  (0.1%, or `OTEL_TRACES_SAMPLER_ARG`) of new traces, every request whose `traceparent` says
  "sampled" and none whose `traceparent` says not. That decision is made by node.tracing
  before the SDK is called (the SDK's sampler is then `parentbased_always_on`), so an
  unrecorded request costs no span; benchmarks/bench_tracing.py measures the rest.

Spans leave through the SDK's batch processor, on its own thread: an exporter that
fails or a collector that is down costs log lines, never a request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from node import tracing

log = logging.getLogger("modelcache.tracing")

DEFAULT_RATIO = 0.001
"""Fraction of new traces recorded when OTEL_TRACES_SAMPLER is unset (parent-based): what keeps
tracing's cost under 5% of a prediction's (benchmarks/bench_tracing.py: a recorded request
costs several times an unrecorded one: its spans are built and encoded in Python)."""
PROTOCOLS = ("http/protobuf", "grpc")
EXTRA_HINT = "MODELCACHE_TRACING=true needs the otel extra: pip install 'modelcache[otel]'"


class TracingUnavailable(RuntimeError):
    """Tracing was asked for and cannot be set up (the extra is missing, a setting is wrong)."""


def install(node_id: str) -> None:
    """Build the tracer provider and exporter from the environment and turn `node.tracing` on."""
    env = os.environ
    try:
        from opentelemetry import propagate
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise TracingUnavailable(f"{EXTRA_HINT} ({exc})") from None

    resource = Resource.create({"service.instance.id": node_id})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "modelcache"}))
    ratio = _root_ratio(env)
    # With the default, node.tracing drops the unrecorded requests first: what reaches the SDK
    # is recorded when its parent (if any) was sampled.
    sampler = None if ratio is None else ParentBased(ALWAYS_ON)
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = _exporter(env)
    if exporter is not None:
        try:
            processor = BatchSpanProcessor(exporter)
        except ValueError as exc:  # OTEL_BSP_* out of range: the SDK's bare ValueError
            raise TracingUnavailable(f"an OTEL_BSP_* setting is out of range: {exc}") from None
        provider.add_span_processor(processor)
    # W3C trace context only (what the issue asks for), whatever OTEL_PROPAGATORS says.
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    tracer = provider.get_tracer("modelcache")
    tracing.activate(tracer, provider.shutdown, ratio)
    log.info(
        "tracing on: %s exporter, sampler %s, service %s",
        _protocol(env) if exporter is not None else "no",
        f"parent-based, {ratio:g} of new traces" if ratio is not None else provider.sampler.get_description(),
        resource.attributes.get("service.name"),
    )


def _root_ratio(env: Mapping[str, str]) -> float | None:
    """None lets the SDK read OTEL_TRACES_SAMPLER; unset, the ratio of new traces to record."""
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "").strip().lower()
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "")
    if sampler:
        if sampler.endswith("traceidratio") and raw:
            _ratio(raw)  # the SDK would warn and record every trace (rate 1.0) on a junk one
        return None
    return _ratio(raw) if raw else DEFAULT_RATIO


def _ratio(raw: str) -> float:
    try:
        ratio = float(raw)
    except ValueError:
        raise TracingUnavailable(f"OTEL_TRACES_SAMPLER_ARG must be a number in 0-1, not {raw!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingUnavailable(f"OTEL_TRACES_SAMPLER_ARG must be a number in 0-1, not {raw!r}")
    return ratio


def _protocol(env: Mapping[str, str]) -> str:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip().lower()
    if protocol not in PROTOCOLS:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}"
        )
    return protocol


def _exporter(env: Mapping[str, str]) -> Any:
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER {kind!r} is not supported; use otlp, console or none")
    try:
        if _protocol(env) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    except ImportError as exc:
        raise TracingUnavailable(f"{EXTRA_HINT} ({exc})") from None
    return OTLPSpanExporter()
