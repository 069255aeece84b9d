"""The baseline a node is measured against: the least an HTTP model server can do.

    MODEL=path/to/model.ubj python benchmarks/bare_app.py --port 8100

Bare Starlette, one model, no cache, no validation beyond what numpy does:
`orjson.loads` → `np.asarray(float32)` → `Booster.inplace_predict` →
`orjson.dumps`, under uvicorn with httptools and uvloop, one worker, XGBoost
with nthread=1. It serves the same two routes as a node
(`/api/v1/models/{m}/predict`, `/v2/models/{m}/infer`) with the same bodies,
so `bench_http.py` can drive both with one load script. Issue 9 sets a node's
targets as ratios to this app's throughput.

`--batch thread|adaptive` is not the baseline: it routes both endpoints through
`node.batching.Batcher` and `node.runtime` (the direct C call), to measure
what micro-batching and the runtime give on a lean HTTP layer, and whether
lone predicts should run inline (adaptive: `inline_max_rows=1`) or in the
predict thread (`inline_max_rows=0`).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before xgboost starts OpenMP

import argparse

import numpy as np
import orjson
import uvicorn
import xgboost as xgb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build(model_path: str, batch: str | None = None) -> Starlette:
    booster = xgb.Booster(model_file=model_path)
    booster.set_param({"nthread": 1})
    if batch:
        return build_batched(booster, batch)

    def respond(doc: object) -> Response:
        return Response(orjson.dumps(doc), media_type="application/json")

    async def v1(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        x = np.asarray([doc["features"]], dtype=np.float32)
        p = float(booster.inplace_predict(x)[0])
        label = int(p >= 0.5)
        return respond({"model_type": request.path_params["m"], "prediction": label, "probability": p})

    async def v2(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        p = booster.inplace_predict(x)
        labels = (p >= 0.5).astype(int).tolist()
        outputs = [
            {"name": "predict", "datatype": "INT64", "shape": [len(p)], "data": labels},
            {"name": "predict_proba", "datatype": "FP32", "shape": [len(p)], "data": p.tolist()},
        ]
        return respond({"model_name": request.path_params["m"], "outputs": outputs})

    return Starlette(
        routes=[
            Route("/api/v1/models/{m}/predict", v1, methods=["POST"]),
            Route("/v2/models/{m}/infer", v2, methods=["POST"]),
            Route("/healthz", lambda _r: Response(b"ok"), methods=["GET"]),
        ]
    )


def build_batched(booster: xgb.Booster, mode: str) -> Starlette:
    """The same routes over `Batcher.predict` (see the module docstring)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from coordinator.registry import ModelMetadata
    from node.batching import Batcher
    from node.runtime import BoosterAdapter, LoadedModel

    meta = ModelMetadata("churn", "bench", "xgboost-ubj", "", "", 0, "")
    model = LoadedModel(meta, BoosterAdapter(booster))
    batcher = Batcher(256, inline_max_rows=1 if mode == "adaptive" else 0)
    key = ("churn", "bench")

    def respond(doc: object) -> Response:
        return Response(orjson.dumps(doc), media_type="application/json")

    async def v1(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        out = await batcher.predict(key, model, [doc["features"]])
        m = request.path_params["m"]
        return respond({"model_type": m, "prediction": out.labels[0], "probability": out.probabilities[0]})

    async def v2(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        out = await batcher.predict(key, model, x)
        n = len(out.labels)
        outputs = [
            {"name": "predict", "datatype": "INT64", "shape": [n], "data": out.labels},
            {"name": "predict_proba", "datatype": "FP32", "shape": [n], "data": out.probabilities},
        ]
        return respond({"model_name": request.path_params["m"], "outputs": outputs})

    return Starlette(
        routes=[
            Route("/api/v1/models/{m}/predict", v1, methods=["POST"]),
            Route("/v2/models/{m}/infer", v2, methods=["POST"]),
            Route("/healthz", lambda _r: Response(b"ok"), methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", default=os.environ.get("MODEL"))
    parser.add_argument("--batch", choices=["thread", "adaptive"], help="not the baseline: see above")
    args = parser.parse_args()
    uvicorn.run(
        build(args.model, args.batch),
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
