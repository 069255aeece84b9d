"""LightGBM and ONNX models published with `modelcache publish` and served by a real node.

Every protocol answers what the library itself answers: /api/v1, KServe V1 and
V2 (through NVIDIA's tritonclient, one tensor and one input per column).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from coordinator.registry import Registry
from testkit.model_files import ModelFile, write_lightgbm, write_onnx
from tests.helpers import NodeProcess

pytest.importorskip("lightgbm")
pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

X = np.random.default_rng(11).normal(size=(20, 4)).astype(np.float32)
HIDE = """
import importlib.abc, sys

class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
"""


def publish_cli(registry: Registry, model_file: ModelFile, model_type: str) -> dict:
    cli = [sys.executable, "-m", "coordinator.cli", "publish", str(model_file.path)]
    args = ["--model-type", model_type, "--version", "1.0", "--registry", str(registry.root), "--json"]
    proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def models(registry: Registry, tmp_path: Path) -> dict[str, ModelFile]:
    files = {
        "lgb": write_lightgbm(tmp_path, "binary"),
        "lgbmulti": write_lightgbm(tmp_path, "multiclass"),
        "pipeline": write_onnx(tmp_path, "sklearn-pipeline"),
        "xgbonnx": write_onnx(tmp_path, "xgboost"),
        "columns": write_onnx(tmp_path, "columns"),
    }
    for name, model_file in files.items():
        meta = publish_cli(registry, model_file, name)
        assert meta["task"] == model_file.task and tuple(meta["features"]) == model_file.features
        assert meta["format"] == ("lightgbm-txt" if name.startswith("lgb") else "onnx")
    return files


def test_every_protocol_answers_the_librarys_own(
    registry: Registry, models: dict[str, ModelFile], node_process: Callable[..., NodeProcess]
) -> None:
    node = node_process(registry.root, MODELCACHE_MAX_BATCH="100")
    client = triton.InferenceServerClient(url=f"127.0.0.1:{node.port}")
    try:
        for name, model_file in models.items():
            labels, probs = model_file.reference(X)
            v1 = httpx.post(
                f"{node.url}/v1/models/{name}:predict", json={"instances": X.tolist()}, timeout=30
            )
            assert v1.status_code == 200, v1.text
            np.testing.assert_allclose(v1.json()["predictions"], labels, atol=1e-5)
            shown = probs[:, 1] if probs.shape[1] == 2 else probs
            np.testing.assert_allclose(v1.json()["probabilities"], shown, atol=1e-5)
            api = httpx.post(
                f"{node.url}/api/v1/batch_predict",
                json={"model_type": name, "instances": X.tolist()},
                timeout=30,
            )
            assert api.json()["predictions"] == v1.json()["predictions"]

            one = triton.InferInput("input-0", list(X.shape), "FP32")
            one.set_data_from_numpy(X, binary_data=True)
            result = client.infer(name, [one])
            np.testing.assert_allclose(result.as_numpy("predict_proba"), probs, atol=1e-5)
            np.testing.assert_allclose(result.as_numpy("predict"), labels, atol=1e-5)
            if model_file.features:
                cols = []
                for i, feature in enumerate(model_file.features):
                    col = triton.InferInput(feature, [len(X), 1], "FP32")
                    col.set_data_from_numpy(np.ascontiguousarray(X[:, i : i + 1]), binary_data=i % 2 == 0)
                    cols.append(col)
                by_column = client.infer(name, cols, parameters={"content_type": "pd"})
                np.testing.assert_array_equal(
                    by_column.as_numpy("predict_proba"), result.as_numpy("predict_proba")
                )
            platform = client.get_model_metadata(name)["platform"]
            assert platform == ("lightgbm" if name.startswith("lgb") else "onnxruntime")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("hidden", "name", "extra"), [("lightgbm", "lgb", "lightgbm"), ("onnxruntime", "pipeline", "onnx")]
)
def test_without_the_extra_a_node_answers_503_naming_it(
    registry: Registry,
    models: dict[str, ModelFile],
    node_process: Callable[..., NodeProcess],
    tmp_path: Path,
    hidden: str,
    name: str,
    extra: str,
) -> None:
    site = tmp_path / f"no-{hidden}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE.format(hidden={hidden}))
    root = Path(__file__).resolve().parents[3]
    node = node_process(registry.root, PYTHONPATH=f"{site}:{root}")
    r = httpx.post(f"{node.url}/v1/models/{name}:predict", json={"instances": X[:1].tolist()}, timeout=30)
    assert r.status_code == 503, r.text
    assert f"pip install 'modelcache[{extra}]'" in r.json()["error"], r.json()
    # Every other format still serves on that node.
    other = "pipeline" if name == "lgb" else "lgb"
    ok = httpx.post(f"{node.url}/v1/models/{other}:predict", json={"instances": X[:1].tolist()}, timeout=30)
    assert ok.status_code == 200, ok.text
