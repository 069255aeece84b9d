"""node.runtimes.base: rows to a matrix, in one numpy call for plain lists, with the same outcome."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from node.errors import InvalidInput
from node.runtimes.base import LoadedModel

FEATURES = ("f0", "f1", "f2")


def model() -> LoadedModel:
    meta = SimpleNamespace(features=FEATURES, model_type="m", version="1.0", task="binary")
    return LoadedModel(meta, SimpleNamespace(n_features=3, task="binary"))  # type: ignore[arg-type]


def row_by_row(rows: list[Any]) -> np.ndarray:
    lm = model()
    return np.array([lm._order(row, i) for i, row in enumerate(rows)], dtype=np.float32)


@pytest.mark.parametrize(
    "rows",
    [
        [[1.0, 2.0, 3.0]],
        [[1, 2, 3], [0.5, None, -1e30]],
        [[float(i), i / 3, -i] for i in range(1000)],
    ],
)
def test_plain_lists_convert_at_once_to_what_the_row_path_gives(rows: list[Any]) -> None:
    lm = model()
    at_once = lm._lists_at_once(rows)
    assert at_once is not None  # the one-call path was taken
    np.testing.assert_array_equal(at_once, row_by_row(rows))
    np.testing.assert_array_equal(lm.to_matrix(rows), row_by_row(rows))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], r"expected 3 features \(f0, f1, f2\), got 2 \(instance 1\)"),
        ([[1.0, 2.0]], r"expected 3 features \(f0, f1, f2\), got 2"),
        ([[1.0, 2.0, 3.0], {"f0": 1.0, "f1": 2.0}], r"missing feature\(s\) f2 .*\(instance 1\)"),
        ([[[1.0], [2.0], [3.0]]], "features must be numbers or null"),
        ([[1.0, float("inf"), 3.0]], "features must be finite numbers"),
    ],
)
def test_rows_the_one_call_path_cannot_take_keep_their_precise_errors(rows: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        model().to_matrix(rows)


def test_maps_and_ragged_rows_take_the_row_by_row_path() -> None:
    lm = model()
    assert lm._lists_at_once([{"f0": 1.0, "f1": 2.0, "f2": 3.0}]) is None
    assert lm._lists_at_once([[1.0, 2.0, 3.0], [1.0]]) is None
    assert lm._lists_at_once([]) is None
    np.testing.assert_array_equal(
        lm.to_matrix([{"f2": 3.0, "f1": 2.0, "f0": 1.0}]), np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    )
