"""Packaging: the dependency floors the code needs, and this project installed next to the official code.

The registry's `detr` (0.1.4) is a third party's upload of the official code, with top-level
`models`, `util` and `datasets`; this project is the distribution `detr-aligned` with the import
package `detr`. Both must fit in one environment without one overwriting the other.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import detr

from .helpers import official

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# What the code needs, checked by hand (see the comment in pyproject.toml): torchvision 0.21 made
# transforms v2 `make_params` / `transform` public and requires torch 2.6.
FLOORS = {"torch": (2, 6), "torchvision": (0, 21)}


def release(version: str) -> tuple[int, ...]:
    """'2.14.1+cu130' -> (2, 14, 1)."""
    return tuple(int(part) for part in re.match(r"\d+(\.\d+)*", version).group().split("."))


def dependency_ranges() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{name: (lower bound, upper bound)} of pyproject's ">=A,<B" dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ranges = {}
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\d.]+),<([\d.]+)", requirement.replace(" ", ""))
        if found:
            ranges[found[1]] = (release(found[2]), release(found[3]))
    return ranges


def test_torch_and_torchvision_floors_are_what_the_code_needs():
    ranges = dependency_ranges()
    for name, floor in FLOORS.items():
        assert name in ranges, f"pyproject.toml: {name} needs a '>=floor,<ceiling' range"
        assert ranges[name][0] == floor, f"pyproject.toml: {name} >= {ranges[name][0]}, the code needs {floor}"


def test_tested_and_pinned_versions_are_inside_the_stated_ranges():
    ranges = dependency_ranges()
    pins = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", (REPO / "scripts" / "setup.sh").read_text()))
    assert pins.keys() == {"torch", "torchvision"}, "scripts/setup.sh pins torch and torchvision"
    for name, version in [*pins.items(), ("torch", torch.__version__), ("torchvision", torchvision.__version__)]:
        low, high = ranges[name]
        assert low <= release(version)[:len(low)] and release(version)[:len(high)] < high, (name, version)


def test_distribution_name_is_not_the_registrys_detr():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "detr-aligned"
    assert project["scripts"] == {"detr": "detr.cli:main"}
    assert project["license"] == "Apache-2.0"  # an SPDX string: no setuptools deprecation warning


def pip(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_ours_and_the_official_code_install_side_by_side(tmp_path):
    # Build from a copy: building in the checkout would leave build/ and *.egg-info there.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = tmp_path / "site"
    # -v shows the build backend's output, where setuptools warns about deprecated metadata
    built = pip("install", "-v", "--no-deps", "--no-compile", "--target", str(site), str(source))
    warnings = [line.strip() for line in built.splitlines() if re.search(r"(Deprecation|BuildBackend)Warning", line)]
    assert not warnings, f"building {source} warns: {warnings}"
    official_out = pip("install", "--no-deps", "--no-index", "--no-compile", "--target", str(site),
                       str(official.reference_wheel()))
    assert "already exists" not in official_out  # pip --target says so when a top-level folder clashes

    versions = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])}
    assert versions == {"detr-aligned": detr.__version__, "detr": official.REFERENCE_VERSION}
    assert (site / "detr" / "__init__.py").read_bytes() == (REPO / "src" / "detr" / "__init__.py").read_bytes()
    assert (site / "detr" / "models" / "detr.py").is_file()
    for module in ("models/detr.py", "models/matcher.py", "util/box_ops.py", "util/misc.py", "datasets/coco.py"):
        assert (site / module).is_file(), module
    assert (site / "bin" / "detr").is_file()  # the command keeps its name
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of any other install of detr
    imported = subprocess.run([sys.executable, "-c", "import detr; print(detr.__file__)"], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=120)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert Path(imported.stdout.strip()) == site / "detr" / "__init__.py"
