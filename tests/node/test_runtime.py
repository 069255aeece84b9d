from __future__ import annotations

import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb

from coordinator.registry import Registry
from node.errors import InvalidInput, ModelLoadError
from node.runtime import deserialize
from tests.helpers import FEATURES, PublishFn, train_booster

ROWS = [[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, None, 1.5]]


def _load(registry: Registry, model_type: str, version: str):
    meta = registry.metadata(model_type, version)
    return deserialize(meta, registry.artifact_path(meta).read_bytes())


def _expected(booster: xgb.Booster, rows: list) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return booster.predict(xgb.DMatrix(x, missing=np.nan))


@pytest.mark.parametrize("fmt", ["ubj", "json"])
def test_binary_booster_matches_xgboost(registry: Registry, publish: PublishFn, fmt: str) -> None:
    publish("m", "1.0", seed=3, fmt=fmt)
    model = _load(registry, "m", "1.0")
    out = model.predict(ROWS)
    want = _expected(train_booster(seed=3), ROWS)
    np.testing.assert_allclose(out.probabilities, want, atol=1e-6)
    assert out.labels == [int(p >= 0.5) for p in want]
    assert model.task == "binary_classification" and model.n_features == 4


def test_mapping_rows_are_ordered_by_metadata_features(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    model = _load(registry, "m", "1.0")
    as_map = [dict(zip(reversed(FEATURES), reversed(row), strict=True)) for row in ROWS]
    assert model.predict(as_map).probabilities == model.predict(ROWS).probabilities


def test_multiclass_and_regression_boosters(registry: Registry, publish: PublishFn) -> None:
    publish("multi", "1.0", objective="multi:softprob")
    publish("reg", "1.0", objective="reg:squarederror")
    multi = _load(registry, "multi", "1.0").predict(ROWS)
    assert len(multi.probabilities[0]) == 3
    assert multi.labels[0] == int(np.argmax(multi.probabilities[0]))
    reg = _load(registry, "reg", "1.0")
    assert reg.task == "regression"
    out = reg.predict(ROWS)
    assert out.probabilities is None
    np.testing.assert_allclose(
        out.labels,
        _expected(train_booster(objective="reg:squarederror", seed=zlib.crc32(b"reg/1.0") % 1000), ROWS),
        atol=1e-6,
    )


def test_sklearn_estimator_via_joblib(registry: Registry, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    est = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump(est, tmp_path / "lr.joblib")
    registry.publish(tmp_path / "lr.joblib", "lr", "1.0", features=("a", "b", "c"))
    model = _load(registry, "lr", "1.0")
    rows = [[1.0, 0.0, 0.0], [-1.0, 0.5, 0.2]]
    out = model.predict(rows)
    np.testing.assert_allclose(out.probabilities, est.predict_proba(np.array(rows))[:, 1], atol=1e-6)
    assert out.labels == est.predict(np.array(rows)).tolist()


def test_xgbclassifier_via_joblib(registry: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4))
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, (x[:, 1] > 0).astype(int))
    joblib.dump(clf, tmp_path / "clf.joblib")
    registry.publish(tmp_path / "clf.joblib", "clf", "1.0")
    out = _load(registry, "clf", "1.0").predict(ROWS[:1])
    np.testing.assert_allclose(out.probabilities, clf.predict_proba(np.array([ROWS[0]]))[:, 1], atol=1e-6)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1.0, 2.0], r"expected 4 features \(f0, f1, f2, f3\), got 2"),
        ({"f0": 1, "f1": 1, "f2": 1, "f3": 1, "zz": 1}, "unknown feature.*zz.*expected: f0, f1, f2, f3"),
        ({"f0": 1}, "missing feature.*f1, f2, f3"),
        ([1.0, float("inf"), 0, 0], "finite"),
    ],
)
def test_bad_rows_say_what_was_expected(registry: Registry, publish: PublishFn, row, message: str) -> None:
    publish("m", "1.0")
    with pytest.raises(InvalidInput, match=message):
        _load(registry, "m", "1.0").predict([row])


def test_mapping_needs_feature_names(registry: Registry, tmp_path: Path) -> None:
    train_booster().save_model(tmp_path / "m.ubj")
    registry.publish(tmp_path / "m.ubj", "anon", "1.0")
    with pytest.raises(InvalidInput, match="no feature names"):
        _load(registry, "anon", "1.0").predict([{"f0": 1}])


def test_garbage_bytes_give_a_load_error(registry: Registry, publish: PublishFn) -> None:
    meta = publish("m", "1.0")
    with pytest.raises(ModelLoadError, match=r"could not load m 1\.0"):
        deserialize(meta, b"\x00garbage")


def test_feature_count_mismatch_with_metadata(registry: Registry, tmp_path: Path) -> None:
    train_booster().save_model(tmp_path / "m.ubj")
    meta = registry.publish(tmp_path / "m.ubj", "m", "1.0", features=("only", "two"))
    with pytest.raises(ModelLoadError, match="metadata lists 2 features, the model takes 4"):
        deserialize(meta, registry.artifact_path(meta).read_bytes())
