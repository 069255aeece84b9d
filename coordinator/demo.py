"""Small demo models: XGBoost classifiers trained on synthetic data in seconds."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.registry import AnyRegistry, ModelMetadata


@dataclass(frozen=True)
class DemoSpec:
    model_type: str
    version: str
    features: tuple[str, ...]
    rounds: int
    fmt: str = "ubj"


_CHURN = ("tenure_months", "monthly_spend", "support_calls", "contract_years", "late_payments")
_FRAUD = ("amount", "hour", "merchant_risk", "distance_km", "card_age_days", "velocity_1h")
_UPSELL = ("visits_30d", "basket_size", "discount_rate", "loyalty_years")

DEMO_SPECS: tuple[DemoSpec, ...] = (
    DemoSpec("churn", "1.0.0", _CHURN, 10),
    DemoSpec("churn", "1.1.0", _CHURN, 20),
    DemoSpec("churn", "2.0.0b1", _CHURN, 30),
    DemoSpec("fraud", "1.0.0", _FRAUD, 10, fmt="json"),
    DemoSpec("fraud", "1.2.0", _FRAUD, 20),
    DemoSpec("upsell", "0.9.0", _UPSELL, 10),
    DemoSpec("upsell", "1.0.0", _UPSELL, 15),
)


def synthetic_data(n_features: int, rows: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A binary task whose label depends on a few features, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features)).astype(np.float32)
    weights = rng.normal(size=n_features)
    logits = x @ weights + 0.5 * np.sin(3 * x[:, 0]) + rng.normal(scale=0.5, size=rows)
    return x, (logits > 0).astype(np.int32)


def train_demo_model(spec: DemoSpec, out_dir: Path, seed: int = 0) -> tuple[Path, dict[str, float]]:
    """Train one classifier, save it natively, return (artifact, holdout metrics)."""
    import xgboost as xgb

    x, y = synthetic_data(len(spec.features), seed=seed)
    split = int(len(x) * 0.8)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1}
    dtrain = xgb.DMatrix(x[:split], label=y[:split], feature_names=list(spec.features))
    booster = xgb.train(params, dtrain, num_boost_round=spec.rounds)
    proba = booster.predict(xgb.DMatrix(x[split:], feature_names=list(spec.features)))
    path = out_dir / f"{spec.model_type}-{spec.version}.{spec.fmt}"
    booster.save_model(path)
    return path, _metrics(y[split:], proba)


def _metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    pred = proba >= 0.5
    tp = float(np.sum(pred & (y == 1)))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float((y == 1).sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    # ROC AUC by the rank-sum formula: no scikit-learn needed at run time.
    ranks = np.argsort(np.argsort(proba)) + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1)
    return {
        "accuracy": round(float((pred == y).mean()), 4),
        "f1": round(f1, 4),
        "roc_auc": round(float(auc), 4),
    }


def publish_demo_models(
    registry: AnyRegistry,
    *,
    force: bool = False,
    progress: Callable[[DemoSpec, int, int], None] | None = None,
) -> list[ModelMetadata]:
    """Train and publish every demo spec; existing versions are kept unless `force`."""
    published = []
    with tempfile.TemporaryDirectory(prefix="modelcache-demo-") as tmp:
        for i, spec in enumerate(DEMO_SPECS):
            if progress:
                progress(spec, i, len(DEMO_SPECS))
            if not force and registry.has_version(spec.model_type, spec.version):
                continue
            artifact, metrics = train_demo_model(spec, Path(tmp), seed=i)
            published.append(
                registry.publish(
                    artifact,
                    spec.model_type,
                    spec.version,
                    features=spec.features,
                    metrics=metrics,
                    task="binary_classification",
                    force=force,
                )
            )
    return published
