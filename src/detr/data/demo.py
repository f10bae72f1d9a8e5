"""The built-in demo dataset: coloured shapes on varied backgrounds, written in COCO format.

Deterministic (same seed and sizes -> same bytes), generated in about a second, and small enough
that a small DETR learns it on two CPU cores in minutes. Category ids start at 1 as in COCO, so
`num_classes = len(DEMO_CLASSES) + 1`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..checkpoint import write_bytes

DEMO_CLASSES = ("circle", "square", "triangle", "cross")  # category ids 1, 2, 3, 4
DEMO_NUM_CLASSES = len(DEMO_CLASSES) + 1
_FORMAT_VERSION = 1  # bump when the generator changes, so old folders are regenerated
_MAX_OVERLAP_IOU = 0.25


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] uint8: a two-colour gradient in a random direction plus mild noise."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = xx / w * np.cos(angle) + yy / h * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 6, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _iou(a: list[int], b: list[int]) -> float:
    """IoU of two [x, y, w, h] boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _draw(draw: ImageDraw.ImageDraw, cls: int, x: int, y: int, s: int, colour: tuple[int, ...]) -> None:
    """Draw shape `cls` (1-based id) filling the box [x, x + s) x [y, y + s)."""
    x1, y1, t = x + s - 1, y + s - 1, s / 3
    if cls == 1:
        draw.ellipse([x, y, x1, y1], fill=colour)
    elif cls == 2:
        draw.rectangle([x, y, x1, y1], fill=colour)
    elif cls == 3:
        draw.polygon([(x + (s - 1) / 2, y), (x1, y1), (x, y1)], fill=colour)
    else:
        draw.rectangle([x, y + t, x1, y1 - t], fill=colour)
        draw.rectangle([x + t, y, x1 - t, y1], fill=colour)


def _place(rng: np.random.Generator, w: int, h: int, boxes: list[list[int]]) -> list[int] | None:
    """A square box inside the image overlapping earlier ones by IoU <= 0.25, or None."""
    for _ in range(50):
        s = int(rng.integers(int(0.12 * min(w, h)), int(0.4 * min(w, h)) + 1))
        box = [int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1)), s, s]
        if all(_iou(box, b) <= _MAX_OVERLAP_IOU for b in boxes):
            return box
    return None


def _make_image(rng: np.random.Generator, image_size: int) -> tuple[bytes, int, int, list[tuple[int, list[int]]]]:
    """One JPEG and its objects [(category id, [x, y, w, h])]."""
    w, h = (int(v) for v in rng.integers(image_size, image_size + image_size // 4 + 1, 2))
    pixels = _background(rng, w, h)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, list[int]]] = []
    for _ in range(int(rng.integers(1, 7))):
        box = _place(rng, w, h, [b for _, b in objects])
        if box is None:
            continue
        cls = int(rng.integers(1, len(DEMO_CLASSES) + 1))
        x, y, s, _ = box
        under = pixels[y:y + s, x:x + s].reshape(-1, 3).mean(0)
        colour = rng.integers(0, 256, 3)
        for _ in range(20):  # keep the shape clearly visible against what lies under it
            if np.abs(colour - under).sum() >= 180:
                break
            colour = rng.integers(0, 256, 3)
        _draw(draw, cls, x, y, s, tuple(int(c) for c in colour))
        objects.append((cls, box))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), w, h, objects


def _write_split(root: Path, split: int, name: str, count: int, image_size: int, seed: int) -> Path:
    """Write `count` images into root/name/ and return the path of root/instances_<name>.json."""
    rng = np.random.default_rng([seed, split])
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        data, w, h, objects = _make_image(rng, image_size)
        file_name = f"{image_id:06d}.jpg"
        write_bytes(folder / file_name, data)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for cls, (x, y, bw, bh) in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls,
                         "bbox": [float(x), float(y), float(bw), float(bh)],
                         "area": float(bw * bh), "iscrowd": 0})
    coco = {"info": {"description": f"detr synthetic shapes demo ({name})"}, "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(DEMO_CLASSES)]}
    ann_file = root / f"instances_{name}.json"
    write_bytes(ann_file, json.dumps(coco).encode())
    return ann_file


def _is_complete(root: Path, marker: Path, params: dict[str, Any]) -> bool:
    """True when `root` holds a finished dataset made with `params` (every listed file present)."""
    try:
        if json.loads(marker.read_text()) != params:
            return False
        for name in ("train", "val"):
            data = json.loads((root / f"instances_{name}.json").read_text())
            if not all((root / name / img["file_name"]).is_file() for img in data["images"]):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def make_demo_dataset(root: str | Path, num_train: int = 256, num_val: int = 64, image_size: int = 128,
                      seed: int = 0) -> dict[str, Path]:
    """Write (or reuse) the demo dataset under `root`.

    Returns:
        {"root", "train_images", "train_annotations", "val_images", "val_annotations"} paths.
    """
    if num_train < 1 or num_val < 1 or image_size < 32:
        raise ValueError(f"need num_train >= 1, num_val >= 1, image_size >= 32; got "
                         f"{num_train}, {num_val}, {image_size}")
    root = Path(root)
    paths = {"root": root, "train_images": root / "train", "train_annotations": root / "instances_train.json",
             "val_images": root / "val", "val_annotations": root / "instances_val.json"}
    params = {"version": _FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed}
    marker = root / "demo.json"
    if _is_complete(root, marker, params):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _write_split(root, 0, "train", num_train, image_size, seed)
    _write_split(root, 1, "val", num_val, image_size, seed)
    write_bytes(marker, json.dumps(params).encode())  # last: marks the folder complete
    return paths
