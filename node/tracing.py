"""Request and change tracing (OpenTelemetry), off unless `MODELCACHE_TRACING=true`.

Off, nothing here imports OpenTelemetry and every hook is one check: the doors
(node.http.fast, node.http.observe, node.grpc) test a boolean fixed at start-up,
and the stage hooks below return a shared no-op context when no request of this
context is being recorded. On (`node.otel.install` ran), each request is a server
span continuing the W3C `traceparent` it carried, with one child span per stage:

    <route>                  the request (SERVER): parse, resolve, batch.wait, predict, serialize
      resolve                which version serves it (node.service)
        cache.hit|cache.miss the cache lookup (node.loads)
          load               on a miss, the load itself (its pool thread joins the trace)

`batch.wait` and `predict` are recorded after the fact from the batcher's
timestamps (node.batching): the predict runs on a pool thread, maybe for several
requests at once. A cluster change carries the admin call's `traceparent` in its
Redis record (coordinator.wire.Change), and every node's apply is a span of that
trace (`applied`).

Which requests are recorded is the sampler's choice (node.otel: the standard
`OTEL_TRACES_SAMPLER`, by default a fraction of new traces and every trace whose
parent was sampled). An unsampled request still has a trace id: it is logged and
propagated, but no stage span is made for it.

This module is process-wide state like OpenTelemetry's own global tracer
provider: one node per process (STYLE: scale by nodes, not workers).
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_tracer: Any = None
"""The OpenTelemetry tracer once `node.otel.install` ran; None while tracing is off."""
_shutdown: Callable[[], None] | None = None
_root_ratio: float | None = None
"""With the default sampler (parent-based, a ratio of new traces): that ratio. The decision not
to record is then made here, before the SDK is asked for anything, so an unrecorded request
costs a random draw instead of a span (benchmarks/bench_tracing.py). None: the SDK's sampler
(OTEL_TRACES_SAMPLER) decides every request."""
_draw = random.random
_trace_bits = random.getrandbits
# W3C trace context: version-traceid-parentid-flags; a version other than 00 may add fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16  # invalid ids (W3C)


@dataclass(slots=True)
class Traced:
    """The server span of one request and what the logs and metrics need of it."""

    span: Any
    trace_id: str
    """32 hex digits; the client's when it sent a valid `traceparent`; "" until asked for when
    the request is a new, unrecorded trace (`trace_id()` draws one then: only the access log
    wants it)."""
    sampled: bool
    token: Any = None
    """The OpenTelemetry context token to detach when the request ends."""


_current: contextvars.ContextVar[Traced | None] = contextvars.ContextVar("modelcache_traced", default=None)
_NULL = contextlib.nullcontext()


def enabled() -> bool:
    """True once tracing was installed in this process."""
    return _tracer is not None


def activate(tracer: Any, shutdown: Callable[[], None], root_ratio: float | None = None) -> None:
    """Turn tracing on with `tracer` (node.otel.install calls it); see `_root_ratio`."""
    global _tracer, _shutdown, _root_ratio
    _tracer, _shutdown, _root_ratio = tracer, shutdown, root_ratio


def shutdown() -> None:
    """Flush and stop the exporter (the node's shutdown); tracing is off afterwards."""
    global _tracer, _shutdown
    stop, _tracer, _shutdown = _shutdown, None, None
    if stop is not None:
        stop()


# -- requests ---------------------------------------------------------------------
def start_request(
    name: str,
    traceparent: bytes | str | None,
    tracestate: bytes | str | None = None,
    attributes: Callable[[], dict[str, Any]] | None = None,
) -> Traced:
    """Open the server span of a request (a child of its `traceparent`) and make it current.

    An invalid `traceparent` is ignored (W3C: start a new trace). With the default sampler,
    a request that will not be recorded gets no span at all, only a trace id: its parent's
    when it has one (flag "not sampled"), else a new one. `attributes` is called only for a
    recorded request.
    """
    header = None
    found = _valid(traceparent) if traceparent else None
    if found is not None:
        if _root_ratio is not None and not int(found[4], 16) & 1:
            return _unrecorded(found[2])  # the caller decided: not sampled
        header = found[0]
    if header is None and _root_ratio is not None and _draw() >= _root_ratio:
        return _unrecorded("")
    return _recorded(name, header, tracestate, attributes() if attributes is not None else None)


def _valid(traceparent: bytes | str) -> re.Match[str] | None:
    found = _TRACEPARENT.match(_text(traceparent))
    if found is None or found[1] == "ff" or (found[1] == "00" and found[5] is not None):
        return None
    return found if found[2] != _ZERO_TRACE and found[3] != _ZERO_SPAN else None


def _unrecorded(trace_id: str) -> Traced:
    traced = Traced(None, trace_id, False)
    _current.set(traced)
    return traced


def _recorded(
    name: str, header: str | None, tracestate: bytes | str | None, attributes: dict[str, Any] | None
) -> Traced:
    from opentelemetry import context, propagate, trace

    parent = None
    if header is not None:
        carrier = {"traceparent": header}
        if tracestate:
            carrier["tracestate"] = _text(tracestate)
        parent = propagate.extract(carrier)
    span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)
    span_context = span.get_span_context()
    traced = Traced(span, format(span_context.trace_id, "032x"), span.is_recording())
    traced.token = context.attach(trace.set_span_in_context(span, parent))
    _current.set(traced)
    return traced


def end_request(traced: Traced, status: int, route: str | None = None) -> None:
    """Close the request's span with its HTTP status (an error status from 500 on)."""
    if traced.span is None:  # not recorded: nothing was opened
        _current.set(None)
        return
    from opentelemetry import context, trace

    span = traced.span
    if traced.sampled:
        span.set_attribute("http.response.status_code", status)
        if route is not None:
            span.set_attribute("http.route", route)
            span.update_name(f"{span.name} {route}")
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)
    span.end()
    _current.set(None)
    context.detach(traced.token)


def current() -> Traced | None:
    """The request traced in this context, sampled or not."""
    return _current.get()


def recording() -> bool:
    """True while a sampled request runs in this context: its stages get spans."""
    traced = _current.get()
    return traced is not None and traced.sampled


def trace_id() -> str | None:
    """The trace id of the request in this context (for the access log)."""
    traced = _current.get()
    if traced is None:
        return None
    if not traced.trace_id:
        traced.trace_id = f"{_trace_bits(128):032x}"
    return traced.trace_id


def exemplar() -> dict[str, str] | None:
    """`{"trace_id": ...}` while a sampled request runs here: an exemplar for a latency histogram."""
    traced = _current.get()
    if traced is None or not traced.sampled:
        return None
    return {"trace_id": traced.trace_id}


# -- stages -----------------------------------------------------------------------
def stage(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the recorded request around a stage; a shared no-op otherwise."""
    if not recording():
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def stage_in_thread(name: str, fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` to run on another thread as a child span of the current one (the load of a miss)."""
    ctx = contextvars.copy_context()

    def run() -> T:
        def spanned() -> T:
            with _tracer.start_as_current_span(name):
                return fn()

        return ctx.run(spanned)

    return run


def record(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished child span of the current one, timed elsewhere (batch wait, predict)."""
    _tracer.start_span(name, start_time=start_ns, attributes=attributes or None).end(end_time=end_ns)


@contextlib.contextmanager
def cache_lookup(**attributes: Any) -> Iterator[Callable[[bool], None]]:
    """The cache lookup's span; call the yielded function with whether it was a hit (names it)."""
    with _tracer.start_as_current_span("cache.miss", attributes=attributes) as span:

        def hit(was_hit: bool) -> None:
            if was_hit:
                span.update_name("cache.hit")
            span.set_attribute("modelcache.cache_hit", was_hit)

        yield hit


# -- cluster changes --------------------------------------------------------------
def traceparent() -> str:
    """The current span's W3C `traceparent` ("" when none): what a change record carries."""
    if _tracer is None:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def applied(parent: str, name: str, started: float, **attributes: Any) -> None:
    """A node's apply of a change, as a span of the trace of the call that made it.

    `started` is the wall-clock time (time.time()) the apply began; it ends now.
    """
    if _tracer is None or not parent:
        return
    from opentelemetry import propagate, trace

    ctx = propagate.extract({"traceparent": parent})
    span = _tracer.start_span(
        name,
        context=ctx,
        kind=trace.SpanKind.CONSUMER,
        start_time=int(started * 1e9),
        attributes=attributes,
    )
    span.end(end_time=time.time_ns())


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
