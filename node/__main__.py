"""`python -m node` (and `modelcache node`): run one node in one uvicorn process."""

from __future__ import annotations

import os

# Before XGBoost (imported below) starts its OpenMP runtime: one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging

import uvicorn

from node.app import build_app
from node.settings import NodeSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelcache node", description="Run one inference node.")
    parser.add_argument("--host", help="interface to bind (MODELCACHE_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (MODELCACHE_PORT)")
    parser.add_argument("--registry", help="registry root (MODELCACHE_REGISTRY)")
    parser.add_argument("--redis-url", help="Redis URL for cluster mode (MODELCACHE_REDIS_URL)")
    parser.add_argument("--node-id", help="node name (MODELCACHE_NODE_ID)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = NodeSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {settings.resolved_node_id} %(name)s %(levelname)s %(message)s",
    )
    app = build_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
