"""`/metrics` in OpenMetrics when the scraper asks, with trace ids as exemplars on the latency histograms."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from coordinator.registry import Registry
from tests.helpers import NodeProcess, PublishFn

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
# What Prometheus sends when it can take OpenMetrics (scrape_protocols' default order).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
LATENCY = ("modelcache_http_request_seconds_bucket", "modelcache_predict_seconds_bucket")


def exemplar_trace_ids(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in openmetrics_families(text):
        for sample in family.samples:
            if sample.exemplar is not None:
                found.setdefault(sample.name, set()).add(sample.exemplar.labels["trace_id"])
    return found


def test_openmetrics_shows_the_trace_id_of_a_sampled_request_as_an_exemplar(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    # No collector needed for exemplars: the exporter is off, the sampling decision is not.
    node = node_process(registry.root, MODELCACHE_TRACING="true", OTEL_TRACES_EXPORTER="none")
    reply = httpx.post(
        f"{node.url}/api/v1/models/churn/predict",
        json={"features": [1, 2, 3, 4]},
        headers={"traceparent": SAMPLED},
    )
    assert reply.status_code == 200

    scraped = httpx.get(f"{node.url}/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert scraped.text.rstrip().endswith("# EOF")
    found = exemplar_trace_ids(scraped.text)
    for name in LATENCY:
        assert found.get(name) == {TRACE_ID}, name


def test_plain_text_stays_the_default_and_carries_no_exemplars(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    node = node_process(registry.root, MODELCACHE_TRACING="true", OTEL_TRACES_EXPORTER="none")
    httpx.post(
        f"{node.url}/api/v1/models/churn/predict",
        json={"features": [1, 2, 3, 4]},
        headers={"traceparent": SAMPLED},
    )
    for accept in (None, "text/plain;version=0.0.4", "*/*"):
        headers = {} if accept is None else {"Accept": accept}
        scraped = httpx.get(f"{node.url}/metrics", headers=headers)
        assert scraped.headers["content-type"].startswith("text/plain")
        assert TRACE_ID not in scraped.text
        names = {s.name for f in text_string_to_metric_families(scraped.text) for s in f.samples}
        assert set(LATENCY) <= names


def test_without_tracing_openmetrics_has_no_exemplars(
    node_process: Callable[..., NodeProcess], registry: Registry, publish: PublishFn
) -> None:
    publish("churn", "1.0.0")
    node = node_process(registry.root)
    httpx.post(
        f"{node.url}/api/v1/models/churn/predict",
        json={"features": [1, 2, 3, 4]},
        headers={"traceparent": SAMPLED},
    )
    scraped = httpx.get(f"{node.url}/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert exemplar_trace_ids(scraped.text) == {}
