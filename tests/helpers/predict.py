"""Small models, checkpoint files and image files shared by the predict/export/visualize tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.checkpoint import save_checkpoint
from detr.config import Config, DataConfig, ModelConfig

# A model small enough for CPU tests; nheads is not visible in the weights' shapes.
TINY = {"backbone": "resnet18", "hidden_dim": 64, "nheads": 2, "enc_layers": 1, "dec_layers": 2,
        "dim_feedforward": 128, "num_queries": 10}
# Tests resize to a short side of SIZE (validation uses 800) to stay fast on CPU.
SIZE, MAX_SIZE = 96, 160


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_model(num_classes: int = 91, **overrides) -> detr.DETR:
    """A random small DETR whose class head is biased so that some scores pass 0.5."""
    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=num_classes, **{**TINY, **overrides}).eval()
    with torch.no_grad():
        model.class_embed.bias[1] += 6.0  # class 1 dominates: confident detections to threshold
    return model


def save_official(model: detr.DETR, path: Path, args: dict | None = None) -> Path:
    """Save like the official code: {"model": state_dict} (+ "args" as a Namespace)."""
    import argparse

    obj = {"model": {f"module.{k}" if args else k: v for k, v in model.state_dict().items()}}
    if args is not None:
        obj["args"] = argparse.Namespace(**args)
    torch.save(obj, path)
    return path


def save_ours(model: detr.DETR, path: Path, class_names: list[str], **model_options) -> Path:
    """Save one of our checkpoints: weights + config with model options and class names."""
    cfg = Config(model=ModelConfig(**{**TINY, **model_options}), data=DataConfig(class_names=class_names))
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict()})
    return path


def write_images(folder: Path) -> dict[str, Path]:
    """PNG (RGB), JPEG, grayscale PNG and RGBA PNG files with random content, different sizes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"rgb.png": (60, 90, 3), "photo.jpg": (80, 50, 3), "grey.png": (45, 70), "alpha.png": (64, 64, 4)}
    paths = {}
    for name, shape in shapes.items():
        paths[name] = folder / name
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[name])
    return paths


def expected_resize(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """The validation resize written independently: short side `size`, long side <= `max_size`."""
    short, long = min(height, width), max(height, width)
    if long * size / short > max_size:
        size = round(max_size * short / long)
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~20x faster on one thread than on two contended ones (shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
