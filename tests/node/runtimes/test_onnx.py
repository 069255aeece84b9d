"""ONNX models (skl2onnx / onnxmltools exports): served as onnxruntime and the original library answer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.registry import Registry
from node.errors import ModelLoadError
from node.runtimes import deserialize
from testkit.model_files import COLUMNS, write_onnx
from tests.node.runtimes.conftest import LoadFn

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

ROWS = np.array([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, 1.0, 1.5], [0, 0, 0, 0]], dtype=np.float32)


@pytest.mark.parametrize("kind", ["sklearn-pipeline", "sklearn-regressor", "xgboost", "columns"])
def test_answers_equal_onnxruntime_own(tmp_path: Path, load_published: LoadFn, kind: str) -> None:
    model_file = write_onnx(tmp_path, kind)
    model = load_published(model_file.path)
    assert model.meta.format == "onnx" and model.meta.artifact == "model.onnx"
    assert model.task == model_file.task and model.meta.task == model_file.task
    assert model.meta.features == model_file.features and model.n_features == 4
    out = model.predict(ROWS.tolist())
    labels, probs = model_file.reference(ROWS)
    np.testing.assert_allclose(out.labels, labels, atol=1e-5)
    if probs is None:
        assert out.probabilities is None
    else:
        assert out.probabilities.shape == probs.shape
        np.testing.assert_allclose(out.probabilities, probs, atol=1e-5)


def test_an_exported_sklearn_pipeline_answers_as_sklearn(tmp_path: Path, load_published: LoadFn) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from testkit.model_files import training_data

    model = load_published(write_onnx(tmp_path, "sklearn-pipeline").path)
    x, y = training_data(2, "multiclass")
    original = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)  # as write_onnx trained it
    out = model.predict(ROWS.tolist())
    np.testing.assert_array_equal(out.labels, original.predict(ROWS))
    np.testing.assert_allclose(out.probabilities, original.predict_proba(ROWS), atol=1e-5)


def test_one_input_per_column_takes_rows_by_feature_name(tmp_path: Path, load_published: LoadFn) -> None:
    model = load_published(write_onnx(tmp_path, "columns").path)
    assert model.meta.features == COLUMNS
    by_name = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS.tolist()]
    np.testing.assert_array_equal(
        model.predict(by_name).probabilities, model.predict(ROWS.tolist()).probabilities
    )


def test_without_onnxruntime_the_load_fails_naming_the_extra(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = registry.publish(write_onnx(tmp_path, "sklearn-regressor").path, "m", "1.0")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError) as caught:
        deserialize(meta, registry.artifact_path(meta).read_bytes())
    assert caught.value.reason == "missing_dependency"
    assert "pip install 'modelcache[onnx]'" in caught.value.detail


def test_a_file_that_is_not_onnx_fails_to_load_cleanly(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07not a model")
    meta = registry.publish(path, "m", "1.0")
    with pytest.raises(ModelLoadError):
        deserialize(meta, registry.artifact_path(meta).read_bytes())


def test_a_wrong_width_for_an_open_width_model_is_the_inputs_fault(
    tmp_path: Path, load_published: LoadFn
) -> None:
    model = load_published(write_onnx(tmp_path, "open-width").path)
    assert model.n_features == 0
    assert model.predict(ROWS.tolist()).probabilities.shape == (3, 2)
    with pytest.raises(ValueError, match="onnxruntime refused the input"):
        model.predict([[0.1, 0.2, 0.3]])
