"""LightGBM text models: published with their own task and features, served as LightGBM answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.artifacts import describe_artifact
from coordinator.errors import ArtifactError
from coordinator.registry import Registry
from node.errors import ModelLoadError
from node.runtimes import deserialize
from testkit.model_files import COLUMNS, write_lightgbm
from tests.node.runtimes.conftest import LoadFn

pytest.importorskip("lightgbm")

ROWS = np.array([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, np.nan, 1.5], [0, 0, 0, 0]], dtype=np.float32)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_answers_equal_lightgbm_own(tmp_path: Path, load_published: LoadFn, task: str) -> None:
    model_file = write_lightgbm(tmp_path, task)
    model = load_published(model_file.path)
    assert model.meta.format == "lightgbm-txt" and model.meta.artifact == "model.txt"
    assert model.task == model_file.task and model.meta.task == model_file.task
    assert model.meta.features == COLUMNS and model.n_features == 4
    out = model.predict(ROWS.tolist())
    labels, probs = model_file.reference(ROWS)
    np.testing.assert_allclose(out.labels, labels, atol=1e-5)
    if probs is None:
        assert out.probabilities is None
    else:
        np.testing.assert_allclose(out.probabilities, probs, atol=1e-5)


def test_rows_by_name_follow_the_models_feature_order(tmp_path: Path, load_published: LoadFn) -> None:
    model = load_published(write_lightgbm(tmp_path, "binary").path)
    by_name = [dict(zip(reversed(COLUMNS), reversed(row), strict=True)) for row in ROWS.tolist()]
    np.testing.assert_array_equal(
        model.predict(by_name).probabilities, model.predict(ROWS.tolist()).probabilities
    )


def test_features_given_at_publish_must_match_the_models_count(tmp_path: Path) -> None:
    path = write_lightgbm(tmp_path, "binary").path
    with pytest.raises(ArtifactError, match=r"3 --feature names given, but lgb-binary\.txt takes 4"):
        describe_artifact(path, ["a", "b", "c"])


def test_a_text_file_that_is_not_a_lightgbm_model_is_refused_at_publish(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ArtifactError, match="not a LightGBM text model"):
        describe_artifact(path)


def test_without_lightgbm_the_load_fails_naming_the_extra(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = registry.publish(write_lightgbm(tmp_path, "binary").path, "m", "1.0")
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` now fails as if absent
    with pytest.raises(ModelLoadError) as caught:
        deserialize(meta, registry.artifact_path(meta).read_bytes())
    assert caught.value.reason == "missing_dependency"
    assert "pip install 'modelcache[lightgbm]'" in caught.value.detail
