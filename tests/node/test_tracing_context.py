"""node.tracing's reading of `traceparent` and its sampling decision, in-process (no exporter)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node import otel, tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracing on with no exporter and no new trace recorded: only a sampled parent is."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    otel.install("n1")
    yield
    tracing.shutdown()


def request(traceparent: str | None) -> tuple[tracing.Traced, str | None]:
    """The request's state, and the trace id its access-log line would carry."""
    started = tracing.start_request("POST /x", traceparent)
    logged = tracing.trace_id()
    tracing.end_request(started, 200)
    return started, logged


@pytest.mark.usefixtures("traced")
@pytest.mark.parametrize(
    ("traceparent", "recorded", "continues"),
    [
        (f"00-{TRACE_ID}-{SPAN_ID}-01", True, True),  # sampled: always recorded
        (f"00-{TRACE_ID}-{SPAN_ID}-03", True, True),  # other flag bits do not matter
        (f"00-{TRACE_ID}-{SPAN_ID}-00", False, True),  # the caller said no: its id, no span
        (f"01-{TRACE_ID}-{SPAN_ID}-01-future", True, True),  # a later version may add fields
        (f"00-{TRACE_ID}-{SPAN_ID}-01-extra", False, False),  # version 00 may not
        (f"ff-{TRACE_ID}-{SPAN_ID}-01", False, False),  # version ff is invalid
        (f"00-{'0' * 32}-{SPAN_ID}-01", False, False),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", False, False),  # all-zero parent id
        (f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", False, False),  # upper case is invalid
        ("junk", False, False),
        (None, False, False),
    ],
)
def test_traceparent(traceparent: str | None, recorded: bool, continues: bool) -> None:
    started, logged = request(traceparent)
    assert started.sampled is recorded
    assert (started.span is not None) is recorded
    assert logged is not None and (logged == TRACE_ID) is continues
    assert len(logged) == 32 and int(logged, 16) != 0
    assert tracing.current() is None  # nothing left bound after the request


@pytest.mark.usefixtures("traced")
def test_a_recorded_request_has_an_exemplar_and_stage_spans_an_unrecorded_one_neither() -> None:
    started = tracing.start_request("POST /x", f"00-{TRACE_ID}-{SPAN_ID}-01")
    try:
        assert tracing.exemplar() == {"trace_id": TRACE_ID}
        assert tracing.traceparent().startswith(f"00-{TRACE_ID}-")  # what a change record carries
        with tracing.stage("parse") as span:
            assert span is not None and span.is_recording()
    finally:
        tracing.end_request(started, 200)
    started = tracing.start_request("POST /x", None)
    try:
        assert tracing.exemplar() is None and tracing.trace_id() == tracing.trace_id() != ""
        with tracing.stage("parse") as span:
            assert span is None
    finally:
        tracing.end_request(started, 200)


def test_off_the_hooks_do_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.current() is None and tracing.exemplar() is None and tracing.traceparent() == ""
    with tracing.stage("parse") as span:
        assert span is None
    tracing.applied(f"00-{TRACE_ID}-{SPAN_ID}-01", "apply pin", 0.0)  # no tracer: a no-op


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER_ARG": "lots"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/protobuf, grpc"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "otlp, console or none"),
        # The SDK would trace every request (rate 1.0) on a junk argument to a ratio sampler.
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "junk"}, "0-1"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-1"}, "0-1"),
        # The SDK raised a bare ValueError: a traceback, not a sentence.
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-5"}, "OTEL_BSP_"),
    ],
)
def test_settings_it_cannot_use_stop_the_start_with_a_sentence(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(otel.TracingUnavailable, match=message):
        otel.install("n1")
    assert not tracing.enabled()
