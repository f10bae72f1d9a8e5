"""The package layout: imports go one way (import-linter contracts in pyproject.toml), and nothing runs at import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the contracts of `cwd`/pyproject.toml, importing `detr` from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept():
    done = lint_imports(ROOT / "src", ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "one-way layers KEPT" in done.stdout and "no import cycles KEPT" in done.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("models/detr.py", "from ..training import engine  # noqa", "one-way layers"),  # an import back up the data path
    ("loss/matcher.py", "from ..data import coco  # noqa", "one-way layers"),  # between independent siblings
    ("cli/flags.py", "def _f():\n    from .train import main  # noqa", "no import cycles"),  # a function-level cycle
])
def test_the_contracts_can_fail(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "src" / "detr", tmp_path / "src" / "detr")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "detr" / module
    path.write_text(path.read_text() + "\n\n" + line + "\n")
    done = lint_imports(tmp_path / "src", tmp_path)
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout


def test_nothing_happens_at_import():
    """Importing the package configures no logging, changes no environment and loads no heavy optional parts."""
    code = ("import logging, os, sys; before = dict(os.environ); import detr, detr.cli, detr.inference.export; "
            "assert dict(os.environ) == before; assert not logging.getLogger('detr').handlers; "
            "assert not logging.getLogger().handlers; "
            "assert not {'onnx', 'onnxruntime', 'matplotlib.pyplot'} & set(sys.modules), 'imported at import time'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
