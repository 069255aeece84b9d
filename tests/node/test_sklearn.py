"""scikit-learn models (`modelcache[sklearn]`) served by a real node process, and without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from coordinator.registry import Registry
from tests.helpers import FEATURES, NodeProcess, metric

ESTIMATORS = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0),
}


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURES)))
    return x, (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(int)


def publish_estimator(registry: Registry, tmp_path: Path, model_type: str, estimator: object) -> None:
    path = tmp_path / f"{model_type}.joblib"
    joblib.dump(estimator, path)
    registry.publish(path, model_type, "1.0.0", features=FEATURES, metrics={"f1": 0.9})


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_an_sklearn_classifier_predicts_over_http_as_it_does_itself(
    kind: str, registry: Registry, tmp_path: Path, node_process: Callable[..., NodeProcess]
) -> None:
    x, y = data()
    estimator = ESTIMATORS[kind]().fit(x, y)
    publish_estimator(registry, tmp_path, kind, estimator)
    node = node_process(registry.root)
    rows = np.random.default_rng(1).normal(size=(25, len(FEATURES)))
    expected = estimator.predict_proba(rows)[:, 1]
    labels = estimator.predict(rows)

    one = httpx.post(
        f"{node.url}/api/v1/models/{kind}/predict", json={"features": rows[0].tolist()}, timeout=30
    )
    assert one.status_code == 200, one.text
    assert one.json()["version"] == "1.0.0"
    assert abs(one.json()["probability"] - expected[0]) <= 1e-6
    assert one.json()["prediction"] == labels[0]

    named = dict(zip(FEATURES, rows[1].tolist(), strict=True))
    by_name = httpx.post(
        f"{node.url}/api/v1/predict", json={"model_type": kind, "features": named}, timeout=30
    )
    assert by_name.status_code == 200, by_name.text
    assert abs(by_name.json()["probability"] - expected[1]) <= 1e-6

    batch = httpx.post(
        f"{node.url}/api/v1/models/{kind}/batch_predict", json={"instances": rows.tolist()}, timeout=30
    )
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert np.max(np.abs(np.array(body["probabilities"]) - expected)) <= 1e-6
    assert body["predictions"] == labels.tolist()


HIDE_SKLEARN = '''
import importlib.abc, sys

class _NoSklearn(importlib.abc.MetaPathFinder):
    """This interpreter behaves as if scikit-learn were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoSklearn())
'''


@pytest.fixture
def node_without_sklearn(
    registry: Registry, tmp_path: Path, node_process: Callable[..., NodeProcess]
) -> NodeProcess:
    """A node whose interpreter cannot import sklearn, serving a published LogisticRegression."""
    x, y = data()
    publish_estimator(registry, tmp_path, "logreg", LogisticRegression(max_iter=500).fit(x, y))
    site = tmp_path / "no-sklearn"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_SKLEARN)
    return node_process(registry.root, PYTHONPATH=f"{site}:{Path(__file__).resolve().parents[2]}")


def predict_logreg(node: NodeProcess) -> httpx.Response:
    return httpx.post(
        f"{node.url}/api/v1/models/logreg/predict", json={"features": [0.1, 0.2, 0.3, 0.4]}, timeout=30
    )


def test_without_sklearn_a_node_answers_503_naming_the_missing_module(
    node_without_sklearn: NodeProcess,
) -> None:
    r = predict_logreg(node_without_sklearn)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "model_load_failed"
    assert "sklearn" in r.json()["error"], r.json()


def test_without_sklearn_the_error_says_to_install_the_extra(node_without_sklearn: NodeProcess) -> None:
    r = predict_logreg(node_without_sklearn)
    assert r.status_code == 503
    assert "modelcache[sklearn]" in r.json()["error"], r.json()
    failures = metric(
        node_without_sklearn.url,
        "modelcache_model_load_failures_total",
        model_type="logreg",
        reason="missing_dependency",
    )
    assert failures == 1
