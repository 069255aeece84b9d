"""Build deploy/grafana/dashboards/modelcache.json ("modelcache — cache health").

    python deploy/grafana/build_dashboard.py > deploy/grafana/dashboards/modelcache.json

Panels are described compactly here and expanded into Grafana's JSON model; the
test suite checks the committed JSON matches this script, checks it against
Grafana's dashboard schema and runs every query against a real Prometheus.

Imports anywhere: every query goes to the `datasource` variable (any Prometheus
the importer picks, whatever its uid), and rates use `$__rate_interval` (at
least four scrape intervals), so panels have data at a 60 s scrape interval too.
Rare events (loads, reloads) keep a fixed 5-minute window: a rate over one
scrape interval of them would be mostly empty.
"""

from __future__ import annotations

import json
import sys
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
N = 'instance=~"$node"'
NM = 'instance=~"$node", model_type=~"$model_type"'
RATE = "[$__rate_interval]"
# Probes and scrapes answer 503 by design while a node warms up: not user traffic.
USER = f'{N}, route!~"/healthz|/readyz|/metrics|/v2/health/.*"'
PREDICT = f'{N}, route=~".*(predict|infer)"'


def q(expr: str, legend: str = "", fmt: str = "time_series", instant: bool = False) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "format": fmt, "instant": instant, "range": not instant}


# (title, type, unit, width, height, targets, description)
ROWS: list[tuple[str, list[tuple[str, str, str, int, int, list[dict[str, Any]], str]]]] = [
    (
        "Cache health",
        [
            (
                "Cluster hit rate",
                "stat",
                "percentunit",
                6,
                5,
                [
                    q(
                        f"sum(rate(modelcache_cache_hits_total{{{NM}}}{RATE})) / (sum(rate(modelcache_cache_hits_total{{{NM}}}{RATE}))"
                        f" + sum(rate(modelcache_cache_misses_total{{{NM}}}{RATE})))",
                        "hit rate",
                    )
                ],
                "Share of lookups served from a node's cache over the last minute (from hits and misses).",
            ),
            (
                "Hit rate per node",
                "timeseries",
                "percentunit",
                18,
                5,
                [
                    q(
                        f"sum by (instance) (rate(modelcache_cache_hits_total{{{NM}}}{RATE})) / (sum by (instance) "
                        f"(rate(modelcache_cache_hits_total{{{NM}}}{RATE})) + sum by (instance) "
                        f"(rate(modelcache_cache_misses_total{{{NM}}}{RATE})))",
                        "{{instance}}",
                    )
                ],
                "Per-node hit rate; a node well below the others gets more model types than it can hold.",
            ),
            (
                "Misses per second",
                "timeseries",
                "ops",
                8,
                7,
                [q(f"sum by (instance) (rate(modelcache_cache_misses_total{{{NM}}}{RATE}))", "{{instance}}")],
                "Each miss waits for a model load.",
            ),
            (
                "Evictions per second",
                "timeseries",
                "ops",
                8,
                7,
                [
                    q(
                        f"sum by (instance) (rate(modelcache_cache_evictions_total{{{N}}}{RATE}))",
                        "{{instance}}",
                    )
                ],
                "Sustained evictions mean thrashing: capacity is too small for the models routed to the node.",
            ),
            (
                "Cached models vs capacity",
                "timeseries",
                "short",
                8,
                7,
                [
                    q(f"modelcache_cached_models{{{N}}}", "{{instance}} cached"),
                    q(f"modelcache_cache_capacity_models{{{N}}}", "{{instance}} capacity"),
                ],
                "Models held per node against MODELCACHE_CACHE_SIZE.",
            ),
            (
                "Cache bytes",
                "timeseries",
                "bytes",
                12,
                7,
                [
                    q(f"modelcache_cache_bytes{{{N}}}", "{{instance}} cached (resident)"),
                    q(f"modelcache_cache_max_bytes{{{N}}}", "{{instance}} budget (0: none)"),
                    q(f"process_resident_memory_bytes{{{N}}}", "{{instance}} RSS"),
                ],
                "Resident bytes charged for the cached models, the byte budget (MODELCACHE_CACHE_MAX_BYTES) "
                "and the node process's RSS: RSS above an idle node should stay within ~1.35x the budget.",
            ),
            (
                "Estimated hit ratio with a larger cache",
                "bargauge",
                "percentunit",
                12,
                7,
                [
                    q(
                        f"avg by (capacity_factor) (modelcache_cache_hit_ratio_estimate{{{N}}})",
                        "{{capacity_factor}}x capacity",
                    )
                ],
                "The hit ratio each node would have had with 1x, 2x and 4x its capacity (from its recent "
                "lookups), averaged over the selected nodes: a big step from 1x to 2x says more cache "
                "pays. Empty on nodes that do not export the estimate.",
            ),
            (
                "What each node has cached",
                "table",
                "short",
                24,
                7,
                [
                    q(
                        f"max by (instance, model_type, version) (modelcache_cached_model_info{{{NM}}})",
                        "",
                        "table",
                        True,
                    )
                ],
                "One row per cached model version per node.",
            ),
        ],
    ),
    (
        "HTTP",
        [
            (
                "Predictions within 250 ms (objective: 99%)",
                "stat",
                "percentunit",
                6,
                7,
                [
                    q(
                        f'sum(rate(modelcache_http_request_seconds_bucket{{{PREDICT}, le="0.25"}}{RATE}))'
                        f" / sum(rate(modelcache_http_request_seconds_count{{{PREDICT}}}{RATE}))",
                        "within 250 ms",
                    )
                ],
                "The latency objective of the burn-rate alerts (ModelcachePredictionLatencyFastBurn, "
                "...SlowBurn): prediction requests on every protocol answered within 250 ms.",
            ),
            (
                "Requests per second by route and status",
                "timeseries",
                "reqps",
                6,
                7,
                [
                    q(
                        f"sum by (route, status) (rate(modelcache_http_requests_total{{{N}}}{RATE}))",
                        "{{route}} {{status}}",
                    )
                ],
                "Requests answered, by route template and HTTP status (`status`, the binding label name).",
            ),
            (
                "5xx ratio per node",
                "timeseries",
                "percentunit",
                6,
                7,
                [
                    q(
                        f'(sum by (instance) (rate(modelcache_http_requests_total{{{USER}, status=~"5.."}}{RATE}))'
                        f" or 0 * sum by (instance) (rate(modelcache_http_requests_total{{{USER}}}{RATE})))"
                        f" / sum by (instance) (rate(modelcache_http_requests_total{{{USER}}}{RATE}))",
                        "{{instance}}",
                    )
                ],
                "Share of each node's requests answered with a 5xx, probes and scrapes aside "
                "(ModelcacheHighErrorRate fires above 5% for 5 minutes).",
            ),
            (
                "HTTP latency by route",
                "timeseries",
                "s",
                6,
                7,
                [
                    q(
                        f"histogram_quantile({p}, sum by (le, route) "
                        f"(rate(modelcache_http_request_seconds_bucket{{{USER}}}{RATE})))",
                        f"{{{{route}}}} p{int(p * 100)}",
                    )
                    for p in (0.5, 0.99)
                ],
                "From a request's arrival to its response, by route template: loads on a miss included.",
            ),
        ],
    ),
    (
        "Loads",
        [
            (
                "Model load latency",
                "timeseries",
                "s",
                12,
                7,
                [
                    q(
                        f"histogram_quantile({p}, sum by (le) (rate(modelcache_model_load_seconds_bucket{{{NM}}}[5m])))",
                        f"p{int(p * 100)}",
                    )
                    for p in (0.5, 0.95, 0.99)
                ],
                "Read + sha256 check + deserialize, retries included, from the load histogram.",
            ),
            (
                "Load failures and fallbacks",
                "timeseries",
                "short",
                12,
                7,
                [
                    q(
                        f"sum by (instance, model_type, reason) (increase(modelcache_model_load_failures_total{{{NM}}}[5m]))",
                        "{{instance}} {{model_type}} {{reason}}",
                    ),
                    q(
                        f"sum by (instance, model_type) (increase(modelcache_fallbacks_total{{{NM}}}[5m]))",
                        "fallback {{instance}} {{model_type}}",
                    ),
                ],
                "Loads that failed after every retry (by reason), and requests served by a lower version instead.",
            ),
        ],
    ),
    (
        "Predictions",
        [
            (
                "Throughput by model (rows/s)",
                "timeseries",
                "rps",
                12,
                7,
                [
                    q(
                        f"sum by (model_type) (rate(modelcache_predictions_total{{{NM}}}{RATE}))",
                        "{{model_type}}",
                    )
                ],
                "Rows predicted per second; a batch of N counts N.",
            ),
            (
                "Predict latency by model",
                "timeseries",
                "s",
                12,
                7,
                [
                    q(
                        f"histogram_quantile({p}, sum by (le, model_type) "
                        f"(rate(modelcache_predict_seconds_bucket{{{NM}}}{RATE})))",
                        f"{{{{model_type}}}} p{int(p * 100)}",
                    )
                    for p in (0.5, 0.99)
                ],
                "Model prediction time per request, without any load.",
            ),
        ],
    ),
    (
        "Cluster",
        [
            (
                "Reload events",
                "timeseries",
                "short",
                8,
                7,
                [
                    q(
                        f"sum by (source, outcome) (increase(modelcache_reloads_total{{{N}}}[5m]))",
                        "{{source}} {{outcome}}",
                    )
                ],
                "Reloads and pin changes applied, by where they came from and how they ended.",
            ),
            (
                "Reload propagation latency",
                "timeseries",
                "s",
                8,
                7,
                [
                    q(
                        f"histogram_quantile({p}, sum by (le) (rate(modelcache_reload_propagation_seconds_bucket{{{N}}}[5m])))",
                        f"p{int(p * 100)}",
                    )
                    for p in (0.5, 0.99)
                ],
                "From a change being published in Redis to a node having applied it (15-minute window: changes are rare).",
            ),
            (
                "Redis connectivity per node",
                "timeseries",
                "short",
                8,
                7,
                [q(f"modelcache_redis_connected{{{N}}}", "{{instance}}")],
                "1 while the node reaches Redis. Predictions do not need Redis; pins and reloads do.",
            ),
        ],
    ),
    (
        "Canary",
        [
            (
                "Canary: requests and errors by version",
                "timeseries",
                "rps",
                16,
                7,
                [
                    q(
                        f"sum by (model_type, version) (rate(modelcache_predictions_total{{{NM}}}{RATE}))",
                        "{{model_type}} {{version}} rows/s",
                    ),
                    q(
                        f"sum by (model_type, version) (rate(modelcache_prediction_errors_total{{{NM}}}{RATE}))",
                        "{{model_type}} {{version}} errors/s",
                    ),
                ],
                "Rows predicted and rows whose predict raised, per version: during a canary, compare the "
                "canary's errors with the served version's before promoting (`modelcache canary T --promote`).",
            ),
            (
                "Canary share per node",
                "timeseries",
                "percent",
                8,
                7,
                [
                    q(
                        f"max by (instance, model_type, version) (modelcache_canary_percent{{{NM}}})",
                        "{{instance}} {{model_type}} {{version}}",
                    )
                ],
                "The share of requests naming no version each node sends to a canary; a node missing here "
                "could not load the canary (see `modelcache canary --list`).",
            ),
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row_title, row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        x = 0
        row_height = 0
        for title, kind, unit, w, h, targets, description in row:
            if x + w > 24:
                x, y = 0, y + row_height
                row_height = 0
            panel: dict[str, Any] = {
                "id": pid,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"x": x, "y": y, "w": w, "h": h},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {**t, "refId": chr(ord("A") + i), "datasource": DS} for i, t in enumerate(targets)
                ],
            }
            if kind == "bargauge":
                panel["options"] = {
                    "reduceOptions": {"calcs": ["lastNotNull"]},
                    "orientation": "horizontal",
                    "displayMode": "basic",
                }
                panel["fieldConfig"]["defaults"]["min"] = 0
                panel["fieldConfig"]["defaults"]["max"] = 1
            if kind == "stat":
                panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
                panel["fieldConfig"]["defaults"]["thresholds"] = {
                    "mode": "absolute",
                    "steps": [
                        {"color": "red", "value": None},
                        {"color": "orange", "value": 0.8},
                        {"color": "green", "value": 0.9},
                    ],
                }
            if kind == "table":
                panel["transformations"] = [
                    {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
                ]
            panels.append(panel)
            pid += 1
            x += w
            row_height = max(row_height, h)
        y += row_height

    def variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return {
        "uid": "modelcache-cache-health",
        "title": "modelcache — cache health",
        "tags": ["modelcache"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                },
                variable("node", "node", "label_values(modelcache_cache_capacity_models, instance)"),
                # Misses, not hits: every model type looked up has missed once (its first load),
                # while a type a node keeps evicting may never hit.
                variable(
                    "model_type", "model type", "label_values(modelcache_cache_misses_total, model_type)"
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
