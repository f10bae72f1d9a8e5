"""`detr --help` and every `detr CMD --help` import no torch: parsers need none; a command imports it to run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from detr.cli import COMMANDS

# Written out here, not read from the code under test: what a parser and its help must not import.
HEAVY = ("torch", "torchvision", "numpy", "scipy", "PIL", "matplotlib", "pycocotools", "safetensors", "onnx",
         "onnxruntime", "openvino", "av", "supervision", "trackers", "transformers", "tensorboard", "wandb", "mlflow")
# In a fresh interpreter: run `detr ARGS` as the console script does, then list the heavy packages it loaded.
PROBE = """
import contextlib, io, json, sys
exec(sys.argv[3])
import detr.cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = detr.cli.main(json.loads(sys.argv[1]))
    except SystemExit as e:
        code = e.code
loaded = sorted(name for name in json.loads(sys.argv[2]) if name in sys.modules)
print(json.dumps({"code": code, "help": out.getvalue(), "loaded": loaded}))
"""


def run_help(argv: list[str], setup: str = "") -> dict:
    """`detr.cli.main(argv)` in a new interpreter (after running `setup`): its exit code, what it printed, the
    heavy modules loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY), setup],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name in COMMANDS]], ids=" ".join)
def test_help_imports_no_torch(argv):
    result = run_help(argv)
    assert result["code"] in (0, None)
    assert "usage:" in result["help"]  # the help was printed: the parser was built
    assert result["loaded"] == [], f"detr {' '.join(argv)} imported {', '.join(result['loaded'])}"


def test_the_probe_sees_torch_when_it_is_imported():
    """The check can fail: with the detector imported first, the probe reports torch and torchvision."""
    result = run_help(["predict", "--help"], setup="import detr.inference.detector")
    assert result["code"] == 0 and "usage:" in result["help"]
    assert {"torch", "torchvision"} <= set(result["loaded"])
