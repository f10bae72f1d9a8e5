"""The picture of the training data drawn at the start of training (`data.png`): boxes per class, box sizes,
boxes per image, and a few training images with their boxes after augmentation."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

NUM_IMAGES = 4


def data_stats(records: Iterable[Any], names: list[str]) -> dict[str, Any]:
    """Counts of the non-crowd boxes of scanned image records (`detr.data.scan.ImageRecord`): "labels",
    "names" and "per_class" for each label that has a box or a name other than "N/A", "wh" [N, 2] box
    sizes in pixels (of the records that hold boxes) and "per_image" boxes of each image."""
    counts: dict[int, int] = {}
    sizes, per_image = [], []
    for rec in records:
        t = rec.target
        keep = t["iscrowd"] == 0  # [N]
        for label in t["labels"][keep].tolist():
            counts[label] = counts.get(label, 0) + 1
        if "boxes" in t:  # panoptic records have none: their boxes come from the masks when loaded
            boxes = t["boxes"][keep].reshape(-1, 4)  # [N, 4] xyxy pixels
            sizes.append(boxes[:, 2:] - boxes[:, :2])  # [N, 2]
        per_image.append(int(keep.sum()))
    labels = sorted(set(counts) | {i for i, n in enumerate(names) if n != "N/A"})
    return {"labels": labels, "names": [names[i] if 0 <= i < len(names) else str(i) for i in labels],
            "per_class": [counts.get(i, 0) for i in labels],
            "wh": np.concatenate(sizes) if sizes else np.zeros((0, 2)),  # [N, 2]
            "per_image": per_image}


def augmented_image(image: torch.Tensor, target: dict[str, Any], names: list[str]) -> np.ndarray:
    """A transformed training sample back to pixels (HxWx3 uint8) with its boxes and labels drawn."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = ((image.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte()  # [3, H, W]
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    h, w = pixels.shape[1:]
    for (cx, cy, bw, bh), label in zip(target["boxes"].tolist(), target["labels"].tolist()):  # cxcywh in [0, 1]
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        draw.rectangle(box, outline=(255, 40, 40), width=max(1, round(min(h, w) / 150)))
        name = names[label] if 0 <= label < len(names) else str(label)
        draw.text((box[0] + 2, box[1] + 1), name, fill=(255, 255, 0))
    return np.asarray(picture)


def write_data_picture(dataset: Dataset, output: Path, num_images: int = NUM_IMAGES,
                       title: str = "") -> Path | None:
    """Draw the picture of `dataset` (a `detr.data.coco.CocoDetection`: its scan report's records) into
    `output`; returns the path, or None after a warning when drawing failed (training goes on).

    The random state of torch, numpy and `random` is the same afterwards: the augmentations drawn here leave
    the training run's random numbers untouched.
    """
    from .plots import plot_data

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            names = list(getattr(dataset, "class_names", []) or [])
            stats = data_stats(dataset.report.records.values(), names)
            stats["title"] = title
            picks = np.linspace(0, len(dataset) - 1, min(num_images, len(dataset))).round().astype(int)  # type: ignore[arg-type]
            images = [augmented_image(*dataset[int(i)][:2], names) for i in picks]
            return plot_data(stats, images, output)
    except Exception as e:  # a picture is never worth stopping training
        log.warning("could not draw %s: %s: %s", output, type(e).__name__, e)
        return None
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
