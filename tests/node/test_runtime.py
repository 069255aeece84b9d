from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb

from coordinator.registry import Registry
from node.errors import InvalidInput, ModelLoadError
from node.runtime import BoosterAdapter, DensePredictor, deserialize
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
    np.testing.assert_allclose(out.probabilities[:, 1], want, atol=1e-6)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1, atol=1e-6)
    assert out.labels.tolist() == [int(p >= 0.5) for p in want]
    assert model.task == "binary_classification" and model.n_features == 4


def test_mapping_rows_are_ordered_by_metadata_features(registry: Registry, publish: PublishFn) -> None:
    publish("m", "1.0")
    model = _load(registry, "m", "1.0")
    as_map = [dict(zip(reversed(FEATURES), reversed(row), strict=True)) for row in ROWS]
    np.testing.assert_array_equal(model.predict(as_map).probabilities, model.predict(ROWS).probabilities)


def test_multiclass_and_regression_boosters(registry: Registry, publish: PublishFn) -> None:
    publish("multi", "1.0", objective="multi:softprob")
    publish("reg", "1.0", objective="reg:squarederror")
    multi = _load(registry, "multi", "1.0").predict(ROWS)
    assert multi.probabilities.shape == (len(ROWS), 3)
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
    np.testing.assert_allclose(out.probabilities, est.predict_proba(np.array(rows)), atol=1e-6)
    assert out.labels.tolist() == est.predict(np.array(rows)).tolist()


def test_xgbclassifier_via_joblib(registry: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4))
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, (x[:, 1] > 0).astype(int))
    joblib.dump(clf, tmp_path / "clf.joblib")
    registry.publish(tmp_path / "clf.joblib", "clf", "1.0")
    out = _load(registry, "clf", "1.0").predict(ROWS[:1])
    np.testing.assert_allclose(out.probabilities, clf.predict_proba(np.array([ROWS[0]])), atol=1e-6)


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


# -- the direct predict call (DensePredictor) ------------------------------

OBJECTIVES = ["binary:logistic", "multi:softprob", "multi:softmax", "reg:squarederror", "binary:hinge"]


def _matrix(n: int, n_features: int = 4, seed: int = 7) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, n_features)).astype(np.float32)
    x[0, 1] = np.nan  # missing values take the default branch in both paths
    return x


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("n", [1, 64])
def test_direct_call_equals_xgboost(objective: str, n: int) -> None:
    booster = train_booster(seed=5, objective=objective)
    adapter = BoosterAdapter(booster)
    assert adapter.dense is not None, f"{objective} should take the direct path"
    x = _matrix(n)
    got = adapter.raw(x)
    np.testing.assert_allclose(got, booster.inplace_predict(x), atol=1e-6)
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(x, missing=np.nan)), atol=1e-6)
    assert got.shape == booster.inplace_predict(x).shape
    out = adapter.predict(x)
    assert len(out.labels) == n
    if objective == "multi:softprob":
        assert out.labels.tolist() == booster.predict(xgb.DMatrix(x)).argmax(axis=1).tolist()
        assert out.probabilities.shape == (n, 3)


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob", "reg:squarederror"])
def test_a_hit_does_not_go_through_inplace_predict(objective: str, monkeypatch: pytest.MonkeyPatch) -> None:
    booster = train_booster(objective=objective)
    adapter = BoosterAdapter(booster)
    want = booster.inplace_predict(_matrix(3))

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("inplace_predict called on the fast path")

    monkeypatch.setattr(booster, "inplace_predict", refuse)
    np.testing.assert_allclose(adapter.raw(_matrix(3)), want, atol=1e-6)


def test_categorical_model_falls_back_to_inplace_predict() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[:, 0] = rng.integers(0, 4, size=300)
    y = (x[:, 0] == 2).astype(int)
    dtrain = xgb.DMatrix(x, label=y, feature_types=["c", "q", "q"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "tree_method": "hist", "nthread": 1}, dtrain, 3)
    adapter = BoosterAdapter(booster)
    assert adapter.dense is None
    probe = x[:5]
    want = booster.inplace_predict(probe)
    np.testing.assert_allclose(adapter.predict(probe).probabilities[:, 1], want, atol=1e-6)


def test_unusual_objective_falls_back_to_inplace_predict() -> None:
    booster = train_booster(objective="rank:pairwise")
    adapter = BoosterAdapter(booster)
    assert adapter.dense is None
    np.testing.assert_allclose(adapter.raw(_matrix(5)), booster.inplace_predict(_matrix(5)), atol=1e-6)


def test_direct_path_that_disagrees_at_load_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DensePredictor.__call__
    monkeypatch.setattr(DensePredictor, "__call__", lambda self, x: real(self, x) + 1)
    adapter = BoosterAdapter(train_booster())
    assert adapter.dense is None
    np.testing.assert_allclose(adapter.raw(_matrix(2)), adapter.booster.inplace_predict(_matrix(2)))


def test_direct_call_is_thread_safe_on_one_booster() -> None:
    booster = train_booster(objective="multi:softprob", rounds=20)
    adapter = BoosterAdapter(booster)
    inputs = [_matrix(1 + i % 5, seed=i) for i in range(64)]
    want = [booster.inplace_predict(x) for x in inputs]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            got = list(pool.map(adapter.raw, inputs))
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_joblib_xgbclassifier_and_many_rows(registry: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 4))
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, objective="multi:softprob")
    clf.fit(x, np.digitize(x[:, 0], [-0.5, 0.5]))
    joblib.dump(clf, tmp_path / "clf.joblib")
    registry.publish(tmp_path / "clf.joblib", "clf3", "1.0")
    out = _load(registry, "clf3", "1.0").predict(x[:10].tolist())
    np.testing.assert_allclose(out.probabilities, clf.predict_proba(x[:10]), atol=1e-6)
    assert out.labels.tolist() == clf.predict(x[:10]).tolist()


def test_rows_slices_one_callers_share() -> None:
    adapter = BoosterAdapter(train_booster(objective="multi:softprob"))
    x = _matrix(6)
    whole, part = adapter.predict(x), adapter.predict(x[2:5])
    share = whole.rows(2, 5)
    np.testing.assert_array_equal(share.labels, part.labels)
    np.testing.assert_allclose(share.probabilities, part.probabilities, atol=1e-6)
