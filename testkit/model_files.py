"""Model files for tests and benchmarks: tiny LightGBM and ONNX ones with a reference, slow XGBoost ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

N_FEATURES = 4
COLUMNS = ("age", "tenure", "spend", "visits")


def training_data(seed: int = 0, task: str = "binary") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    if task == "binary":
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    elif task == "multiclass":
        y = np.digitize(x[:, 0], [-0.5, 0.5])
    else:
        y = 3 * x[:, 0] - x[:, 2] + rng.normal(scale=0.1, size=len(x))
    return x, y


@dataclass(frozen=True)
class ModelFile:
    """A model file and the library's own answer for a float32 matrix: (labels, probabilities or None)."""

    path: Path
    reference: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    task: str
    features: tuple[str, ...] = ()


def write_lightgbm(directory: Path, task: str = "binary", names: bool = True) -> ModelFile:
    import lightgbm as lgb

    x, y = training_data(1, task)
    params: dict[str, Any] = {"objective": task, "num_leaves": 7, "verbose": -1, "num_threads": 1}
    if task == "multiclass":
        params["num_class"] = 3
    feature_name = list(COLUMNS) if names else "auto"
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=feature_name), num_boost_round=8)
    path = directory / f"lgb-{task}.txt"
    booster.save_model(path)
    own = lgb.Booster(model_file=str(path))

    def reference(m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = own.predict(m)
        if task == "binary":
            return (out >= 0.5).astype(int), np.stack([1 - out, out], axis=1)
        if task == "multiclass":
            return out.argmax(axis=1), out
        return out, None

    kind = {"binary": "binary_classification", "multiclass": "multiclass_classification"}.get(
        task, "regression"
    )
    return ModelFile(path, reference, kind, COLUMNS if names else tuple(f"Column_{i}" for i in range(4)))


def _session_reference(path: Path, columns: bool = False) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def reference(m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if columns:
            feeds = {n.name: m[:, i : i + 1] for i, n in enumerate(session.get_inputs())}
        else:
            feeds = {session.get_inputs()[0].name: m}
        out = session.run(names, feeds)
        if len(out) == 1:
            return np.asarray(out[0]).reshape(-1), None
        probs = out[1]
        if isinstance(probs, list):
            probs = np.array([list(r.values()) for r in probs], dtype=np.float32)
        return np.asarray(out[0]).reshape(-1), np.asarray(probs)

    return reference


def write_onnx(directory: Path, kind: str = "sklearn-pipeline") -> ModelFile:
    """kind: sklearn-pipeline (scaler + logistic regression, ZipMap output), sklearn-regressor,
    xgboost (an XGBoost classifier through onnxmltools), columns (one input per feature)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    path = directory / f"{kind}.onnx"
    if kind == "sklearn-pipeline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = training_data(2, "multiclass")
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
        onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, N_FEATURES]))])
        task = "multiclass_classification"
    elif kind == "sklearn-regressor":
        from sklearn.ensemble import RandomForestRegressor

        x, y = training_data(3, "regression")
        model = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
        onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, N_FEATURES]))])
        task = "regression"
    elif kind == "xgboost":
        import onnxmltools
        import xgboost as xgb
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

        x, y = training_data(4, "binary")
        model = xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1).fit(x, y)
        onx = onnxmltools.convert_xgboost(model, initial_types=[("input", MLFloat([None, N_FEATURES]))])
        task = "binary_classification"
    elif kind == "open-width":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = training_data(6, "binary")
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
        # [N, None]: the file does not say how many features it takes.
        onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, None]))])
        task = "multiclass_classification"  # a ZipMap output of unknown width: not knowable as binary
    elif kind == "columns":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression()
        inputs = [(c, FloatTensorType([None, 1])) for c in COLUMNS]
        onx = _columns_model(model, inputs)
        task = "binary_classification"
    else:
        raise ValueError(kind)
    path.write_bytes(onx.SerializeToString())
    features = COLUMNS if kind == "columns" else ()
    return ModelFile(path, _session_reference(path, columns=kind == "columns"), task, features)


def _columns_model(model: Any, inputs: list[Any]) -> Any:
    from skl2onnx import convert_sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    # One [N, 1] input per column, as skl2onnx exports a pipeline fed from a data frame.
    passthrough = ColumnTransformer([("all", "passthrough", list(range(N_FEATURES)))])
    x, y = training_data(5, "binary")
    pipe = make_pipeline(passthrough, model).fit(x, y)
    return convert_sklearn(pipe, initial_types=inputs, options={id(model): {"zipmap": False}})


def train_booster(
    seed: int = 0, rounds: int = 5, n_features: int = 4, objective: str = "binary:logistic"
) -> xgb.Booster:
    """A small XGBoost model on a learnable synthetic task (binary, or 3 classes for multi:*)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, n_features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    params = {"objective": objective, "max_depth": 2, "nthread": 1, "seed": seed}
    if objective.startswith("multi:"):
        y = np.digitize(x[:, 0], [-0.5, 0.5])
        params["num_class"] = 3
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def write_slow_model(path: Path, n_trees: int = 3000, n_features: int = 4) -> None:
    """An XGBoost JSON model with many deep trees: valid, and slow to load (~1 s for 3000).

    Built by repeating one trained tree, so it costs a JSON dump rather than a long training run.
    """
    import json

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, n_features))
    booster = xgb.train(
        {"max_depth": 8, "nthread": 1, "objective": "binary:logistic", "eta": 0.001},
        xgb.DMatrix(x, label=rng.integers(0, 2, size=4000)),
        num_boost_round=1,
    )
    model = json.loads(bytes(booster.save_raw("json")))
    gbm = model["learner"]["gradient_booster"]["model"]
    tree = gbm["trees"][0]
    gbm["trees"] = [{**tree, "id": i} for i in range(n_trees)]
    gbm["tree_info"] = [0] * n_trees
    gbm["gbtree_model_param"]["num_trees"] = str(n_trees)
    gbm["iteration_indptr"] = list(range(n_trees + 1))
    path.write_text(json.dumps(model))
