"""Shared by the training tests: tiny demo data, a tiny model's flags, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from detr.config import Config
from detr.data import make_demo_dataset

REPO = Path(__file__).resolve().parents[2]

# A model small enough that a CPU step takes a fraction of a second.
TINY_MODEL = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
              "dim_feedforward": 64, "num_queries": 8, "dropout": 0.0}
TINY_FLAGS = [
    "--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
    "--dim_feedforward", "64", "--num_queries", "8", "--dropout", "0", "--scales", "64", "--max_size", "96",
    "--no_random_crop", "--device", "cpu", "--num_workers", "0", "--batch_size", "2", "--lr_drop", "100",
    "--backbone_weights", "none",
]


def tiny_data(root: Path, num_train: int = 6, num_val: int = 4) -> dict[str, str]:
    """A small demo dataset (64-80 px images)."""
    paths = make_demo_dataset(root, num_train=num_train, num_val=num_val, image_size=64, seed=1)
    return {k: str(v) for k, v in paths.items()}


def data_flags(paths: dict[str, str]) -> list[str]:
    return [f"--{k}={paths[k]}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")]


def config(paths: dict[str, str], output_dir: Path | str, argv: list[str] = ()) -> Config:
    """The Config `detr train` builds for TINY_FLAGS + data + `argv`."""
    from detr.cli.flags import build_parser, config_from_args

    args = build_parser("test", "").parse_args([*TINY_FLAGS, *data_flags(paths), f"--output_dir={output_dir}",
                                                *argv])
    return config_from_args(args)


def env() -> dict[str, str]:
    """Environment of a CLI subprocess: this checkout importable, one thread (reproducible sums)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def run_cli(argv: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detr", *argv], capture_output=True, text=True, env=env(),
                          timeout=timeout, cwd=kwargs.pop("cwd", None), **kwargs)


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def float64_images() -> list[torch.Tensor]:
    """Two fixed random float64 images of different sizes (a padded batch), for tests against formulas."""
    g = torch.Generator().manual_seed(3)
    return [torch.randn(3, 64, 96, generator=g, dtype=torch.float64),
            torch.randn(3, 80, 48, generator=g, dtype=torch.float64)]
