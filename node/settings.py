"""Node settings: flags or `MODELCACHE_*` environment variables.

Only entry points build `NodeSettings()` from the environment; everything else
receives a settings object, so tests construct one directly.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.errors import InvalidName
from coordinator.redis_url import parse_redis_url
from coordinator.registry.store import StoreLocation, is_store_url
from node.priority import HeavySched

GRPC_PORT_OFFSET = 50
"""The default gRPC port is the HTTP port + 50: `modelcache up --port B` gives node i B+i and B+50+i."""


class NodeSettings(BaseSettings):
    """Everything one inference node can be told."""

    # use_attribute_docstrings: each field's docstring becomes its description, which
    # `modelcache node --help` shows beside the flag generated from the field.
    model_config = SettingsConfigDict(env_prefix="MODELCACHE_", extra="ignore", use_attribute_docstrings=True)

    registry: Path | str = Path("./registry")
    """The model registry: a directory, or `s3://bucket/prefix` (endpoint and credentials from the
    standard AWS variables: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, profiles, web identity)."""
    local_cache_dir: Path | None = None
    """With an object-store registry: a directory for verified artifacts, so a model evicted from
    memory reloads from disk, not from the store (and still loads while the store is down)."""
    local_cache_max_bytes: int = Field(10 << 30, ge=1)
    """Byte budget of `local_cache_dir`; least recently used artifacts are removed beyond it."""
    registry_listing_ttl_s: float = Field(30.0, ge=0)
    """With an object-store registry: how long a listing or metadata read is reused before the
    store is asked again (reloads and pin changes re-read at once)."""
    store_timeout_s: float = Field(5.0, gt=0)
    """With an object-store registry: longest wait for one store response (connect: at most 2 s);
    a download may also take its size at 1 MiB/s on top."""
    redis_url: str | None = None
    """Redis for cluster state (pins, reloads, membership); unset runs a standalone node."""
    redis_replica_wait_s: float = Field(1.0, gt=0)
    """How long a pin/unpin/reload waits for a Redis replica to confirm it (when the primary has one)."""
    redis_prefix: str = "modelcache:"
    """Prefix of every Redis key and channel, so two clusters can share one Redis."""
    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = 8000
    """Port to bind."""
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC; default the HTTP port + 50 (8050); 0 turns gRPC off."""
    grpc_workers: int = Field(0, ge=0, le=1024)
    """gRPC server threads (each call still runs on the node's event loop); 0: grpc.aio on the loop."""
    grpc_max_concurrent_rpcs: int | None = Field(None, ge=1)
    """gRPC calls in progress before a new one is answered RESOURCE_EXHAUSTED at once (default
    MAX_CONNECTIONS; with GRPC_WORKERS, at most that many); node/grpc/limits.py lists the other bounds."""
    node_id: str = ""
    """Name of this node in the cluster; default `<hostname>-<port>`."""
    public_url: str = ""
    """URL other processes use to reach this node; default `http://<host>:<port>`."""
    admin_token: str = ""
    """Bearer token for admin routes; when empty, admin routes are refused."""
    cache_size: int = Field(3, ge=1)
    """Most models held in memory at once."""
    cache_max_bytes: int | None = Field(None, ge=1)
    """Optional byte budget for cached models, charged at resident size (node.memory), not file size."""
    cache_policy: Literal["lru", "lfu", "arc", "cost"] = "lru"
    """Eviction policy: `lru`, `lfu` (frequency with aging), `arc` (adaptive, scan-resistant)
    or `cost` (weighs frequency, measured load time and resident bytes: slow loads stay)."""
    cache_idle_ttl_s: float | None = Field(None, gt=0)
    """Drop a cached model unused for this many seconds (counted as an eviction, reason `idle`)."""
    load_retries: int = Field(3, ge=1)
    """Attempts per model load before giving up."""
    load_retry_backoff_s: float = Field(0.1, ge=0)
    """First wait between load attempts; doubles after each failure."""
    load_failure_ttl_s: float = Field(30.0, ge=0)
    """How long a version that failed to load is skipped in favour of its fallback."""
    load_timeout_s: float = Field(60.0, gt=0)
    """Longest a request (or reload) waits for a model load; beyond it the load fails (503)."""
    load_workers: int = Field(4, ge=1)
    """Threads dedicated to model loads: stuck reads on a hung filesystem cannot use more."""
    ondemand_loads_per_min: int = Field(30, ge=1)
    """Loads of explicitly requested non-default versions allowed per minute per node (429 beyond)."""
    pins: dict[str, str] = {}
    """Local version pins (JSON object); cluster pins from Redis take precedence."""
    warmup: list[str] = []
    """Model types to load before /readyz turns ready (JSON list)."""
    warmup_popular: bool = False
    """Also warm the cluster's most requested model types, up to the cache capacity."""
    state_dir: Path | None = None
    """Warm restart: a directory where the node saves what it caches (model, version, uses) at
    shutdown and every STATE_SAVE_INTERVAL_S, and restores the hottest of it from at start."""
    state_save_interval_s: float = Field(30.0, gt=0)
    """How often the warm-restart state is saved (besides at shutdown)."""
    restore_budget_s: float = Field(10.0, ge=0)
    """Longest a warm restart holds /readyz back; loads still running then finish afterwards."""
    reconcile_interval_s: float = Field(5.0, gt=0)
    """How often the node re-reads cluster state from Redis, in case it missed an event."""
    heartbeat_s: float = Field(2.0, gt=0)
    """Membership heartbeat; a node drops out of the cluster view after three misses."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted (413 beyond)."""
    max_batch: int = Field(1000, ge=1)
    """Most instances in one batch_predict request (413 beyond)."""
    batch_max_rows: int = Field(256, ge=1)
    """Most rows one coalesced predict call takes from concurrent requests for one model."""
    predict_threads: int = Field(2, ge=1, le=64)
    """Threads that run predictions; one model holds at most one, so a slow model leaves the
    others theirs (2 on a 2-core node; more only helps with more cores)."""
    heavy_predict_ms: float = Field(5.0, gt=0)
    """A model whose predict calls average more CPU than this (EWMA) is heavy: its predicts run on
    threads at a lower OS priority (HEAVY_PREDICT_SCHED), and never on the event loop."""
    heavy_predict_sched: HeavySched = "nice"
    """How heavy models' predicts yield the CPU (Linux): nice (threads at HEAVY_PREDICT_NICE), idle
    (SCHED_IDLE threads, preempted as soon as other work wakes; the least share under contention, and
    while other processes fill the CPUs a SCHED_IDLE thread holding the GIL stalls the event loop) or
    process (XGBoost predicts in SCHED_IDLE worker processes with their own GIL: idle's latency
    without its stall, for a copy of each heavy booster outside the byte budget; node.heavy_worker)."""
    heavy_predict_nice: int = Field(10, ge=0, le=19)
    """How much heavy predict threads raise their nice value (with HEAVY_PREDICT_SCHED=idle: the
    threads of a model starved under SCHED_IDLE); 0: not at all."""
    model_queue_max_rows: int | None = Field(None, ge=1)
    """Rows one model may have waiting to be predicted before it answers 429 model_overloaded
    (default 8 x BATCH_MAX_ROWS)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Seconds a request's headers may take to arrive; a slower client (slowloris) is disconnected."""
    max_connections: int = Field(2048, ge=1)
    """Connections plus requests in progress before the node answers 503 at once (uvicorn's limit)."""
    keep_alive_s: int = Field(75, ge=1)
    """Seconds an idle connection stays open; above the load balancer's idle times, never below."""
    log_level: str = "info"
    """Log level of the node process (debug, info, warning, error)."""
    log_format: Literal["text", "json"] = "text"
    """Log format of the node and of uvicorn: `text` lines, or one JSON object per line."""
    access_log: bool = False
    """Log one line per request (request id, method, route, status, duration; model, version,
    cache hit and rows for a prediction; the trace id with tracing on) on the `modelcache.access` logger."""
    tracing: bool = False
    """OpenTelemetry traces of requests and cluster changes (needs `modelcache[otel]`), exported
    over OTLP as the standard OTEL_* variables say (OTEL_EXPORTER_OTLP_ENDPOINT, ..._PROTOCOL,
    OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER; default: 0.1% of new traces, every sampled parent)."""

    @field_validator("registry")
    @classmethod
    def _absolute(cls, value: Path | str) -> Path | str:
        # An object-store URL stays a string: as a Path, `s3://b/p` would become `s3:/b/p`.
        if isinstance(value, str) and is_store_url(value):
            try:
                StoreLocation.parse(value)
            except InvalidName as exc:
                raise ValueError(exc.reason) from None  # a usage error at start, not a crash later
            return value
        return Path(value).expanduser().resolve()

    @field_validator("redis_url")
    @classmethod
    def _parsable_redis_url(cls, value: str | None) -> str | None:
        # A malformed URL is a usage error at start (one line, password redacted), not a traceback.
        if value:
            parse_redis_url(value)
        return value

    @property
    def resolved_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}-{self.port}"

    @property
    def resolved_grpc_port(self) -> int | None:
        """The gRPC port to bind, None when gRPC is off (MODELCACHE_GRPC_PORT=0)."""
        if self.grpc_port is None:
            return self.port + GRPC_PORT_OFFSET if self.port + GRPC_PORT_OFFSET <= 65535 else None
        return self.grpc_port or None

    @property
    def resolved_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
