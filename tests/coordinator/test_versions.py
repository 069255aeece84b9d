from __future__ import annotations

import pytest

from coordinator.errors import InvalidName
from coordinator.versions import (
    is_prerelease,
    latest_stable,
    normalize_version,
    sort_versions,
    validate_model_type,
)


@pytest.mark.parametrize("name", ["churn", "fraud-v2", "a", "A.b_c-1", "x" * 128])
def test_valid_model_types(name: str) -> None:
    assert validate_model_type(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("../etc", "use letters"),
        ("a/b", "use letters"),
        (".hidden", "use letters"),
        ("..", "use letters"),
        ("x" * 129, "longer than 128"),
        ("churn\n", "use letters"),
        ("a b", "use letters"),
    ],
)
def test_invalid_model_types_say_why(name: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason):
        validate_model_type(name)


def test_versions_order_numerically_not_as_strings() -> None:
    assert sort_versions(["1.9.0", "1.10.0", "1.2.0"]) == ["1.2.0", "1.9.0", "1.10.0"]
    assert latest_stable(["1.9.0", "1.10.0"]) == "1.10.0"


def test_prereleases_are_never_latest() -> None:
    assert latest_stable(["1.0.0", "2.0.0b1", "2.0.0rc1", "1.5.0.dev1"]) == "1.0.0"
    assert latest_stable(["2.0.0b1"]) is None
    assert is_prerelease("2.0.0-beta") and not is_prerelease("2.0.0")


def test_normalisation_follows_pep440() -> None:
    assert normalize_version("2.0.0-beta") == "2.0.0b0"
    assert normalize_version("v1.0") == "1.0"


@pytest.mark.parametrize("bad", ["", "latest", "1.0/../2", "x" * 65])
def test_invalid_versions(bad: str) -> None:
    with pytest.raises(InvalidName):
        normalize_version(bad)
