"""What model files say about themselves at publish (coordinator/artifacts.py), table-tested."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coordinator.artifacts import Described, describe_artifact, lightgbm_header
from coordinator.errors import ArtifactError

HEADER = (
    "tree\nversion=v4\nnum_class={k}\nmax_feature_idx=2\nobjective={objective}\n"
    "feature_names={names}\n\nTree=0\n"
)


@pytest.mark.parametrize(
    ("objective", "k", "task"),
    [
        ("binary sigmoid:1", 1, "binary_classification"),
        ("multiclass num_class:3", 3, "multiclass_classification"),
        ("multiclassova num_class:3 sigmoid:1", 3, "multiclass_classification"),
        ("regression", 1, "regression"),
        ("huber alpha:0.9", 1, "regression"),
        ("lambdarank", 1, "regression"),
    ],
)
def test_lightgbm_objective_gives_the_task(objective: str, k: int, task: str) -> None:
    header = lightgbm_header(HEADER.format(objective=objective, k=k, names="a b c"))
    assert (header.task, header.features, header.n_classes) == (task, ("a", "b", "c"), k)


def test_lightgbm_names_that_do_not_match_the_feature_count_are_dropped() -> None:
    assert lightgbm_header(HEADER.format(objective="binary", k=1, names="a b")).features == ()


@pytest.mark.parametrize("text", ["", "hello\n", "max_feature_idx=x\nobjective=binary\n"])
def test_text_that_is_not_a_lightgbm_header_is_refused(text: str) -> None:
    with pytest.raises(ArtifactError, match="not a LightGBM text model"):
        lightgbm_header(text)


def test_other_formats_and_unknown_suffixes_describe_nothing(tmp_path: Path) -> None:
    for name in ("m.ubj", "m.joblib", "m.bin"):
        (tmp_path / name).write_bytes(b"x")
        assert describe_artifact(tmp_path / name, ["a"]) == Described()


def test_onnx_without_onnxruntime_records_what_the_flags_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert describe_artifact(tmp_path / "m.onnx", ["a", "b"]) == Described()
