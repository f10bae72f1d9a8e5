"""PaddleDetection (paddledet 2.6.0 on paddlepaddle 3.3.1), installed apart and run in its own process.

Like the official code (tests/helpers/official.py), the reference never enters the project's environment: pinned
versions are installed with `pip install --no-deps --target` into two folders under REFERENCE_DIR
(`paddle-3.3.1`: paddle and ppdet, ~730 MB; `paddle-deps`: the modules `import ppdet` needs, ~360 MB) on
first use. `--no-deps` because paddledet pins numpy<1.24 and opencv<=4.6: the environment's own numpy,
scipy, pillow, matplotlib and pycocotools (the project's dependencies) are used as they are.

`run_worker` runs tests/helpers/paddle_worker.py with those folders on PYTHONPATH, so paddle and torch never
share a process; it leaves the `.pdparams` file and the reference outputs (.npz) in a folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .official import REFERENCE_DIR

PADDLE = ["paddlepaddle==3.3.1", "paddledet==2.6.0"]
# The modules `import ppdet` needs (work/shared/REFERENCES.md), at the versions the tests were run with.
DEPS = ["httpx==0.28.1", "anyio==4.16.0", "h11==0.16.0", "httpcore==1.0.9", "idna==3.20",
        "certifi==2026.10.19.post1", "sniffio==1.3.1", "opt_einsum==3.3.0", "networkx==3.6.1", "protobuf==7.36.2",
        "typeguard==4.6.1", "pyyaml==6.0.4", "shapely==2.2.0", "terminaltables==3.1.10",
        "opencv-python-headless==5.0.0.93", "pyclipper==1.4.0", "lap==0.5.13", "requests==2.34.2",
        "urllib3==2.8.0", "six==1.17.0", "charset_normalizer==3.5.3", "scikit-learn==1.9.1", "joblib==1.6.0",
        "threadpoolctl==3.8.0", "cloudpickle==3.1.3", "narwhals==2.29.0", "pandas==3.1.1",
        "python-dateutil==4.0.0", "pytz==2026.6", "tzdata==2026.6", "setuptools==69.5.1"]
FOLDERS = {"paddle-3.3.1": PADDLE, "paddle-deps": DEPS}
WORKER = Path(__file__).with_name("paddle_worker.py")
_MARKER = ".installed"  # written last: the pins of a complete install


def _install(folder: Path, pins: list[str]) -> None:
    """`pins` into `folder` (replaced atomically: an interrupted install leaves no half folder)."""
    marker = folder / _MARKER
    if marker.is_file() and marker.read_text() == "\n".join(pins):
        return
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=REFERENCE_DIR))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                        "--target", str(tmp), *pins], check=True)
        (tmp / _MARKER).write_text("\n".join(pins))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_installed() -> list[Path]:
    """The folders to put on PYTHONPATH, installed on first use."""
    folders = []
    for name, pins in FOLDERS.items():
        _install(REFERENCE_DIR / name, pins)
        folders.append(REFERENCE_DIR / name)
    return folders


def run_worker(out: Path, depth: int = 50, protocol: int = 4, size: tuple[int, int] = (128, 160)) -> Path:
    """PaddleDetection's DETR with random weights: its `.pdparams` and outputs in `out` (see paddle_worker.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in ensure_installed()),
           "PYTHONNOUSERSITE": "1"}
    cmd = [sys.executable, str(WORKER), str(out), "--depth", str(depth), "--protocol", str(protocol),
           "--size", *map(str, size)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the PaddleDetection worker failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return out
