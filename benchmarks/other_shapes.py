"""A second synthetic detection set for the benchmarks: other classes, shapes and backgrounds than the demo's.

Five classes (ring, star, diamond, hexagon, bar; category ids 1-5), 1-6 objects an image, on textured
two-colour backgrounds (stripes, checks or noise), in COCO format with the demo set's layout (`train/`, `val/`,
`instances_train.json`, `instances_val.json`). Bars are elongated (3:1, either way), so boxes are not all square
as in the demo. With `flat`, the same classes on one-colour backgrounds, as the demo's. Deterministic: the same
arguments give the same bytes. The val split depends only on `num_val` and the seed, so sets of different
training sizes share one val set.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

OTHER_CLASSES = ("ring", "star", "diamond", "hexagon", "bar")
_VERSION = 2


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] uint8: stripes, checks or blotchy noise in two random colours."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    kind = int(rng.integers(3))
    if kind == 0:
        period, angle = rng.uniform(5, 14), rng.uniform(0, np.pi)
        second = (xx * np.cos(angle) + yy * np.sin(angle)) % period < period / 2
    elif kind == 1:
        cell = int(rng.integers(4, 12))
        second = ((xx // cell + yy // cell) % 2).astype(bool)
    else:
        coarse = rng.random((h // 8 + 2, w // 8 + 2))
        second = np.kron(coarse, np.ones((8, 8)))[:h, :w] > 0.5
    pixels = np.where(second[..., None], c1, c0) + rng.normal(0, 8, (h, w, 3))
    return pixels.clip(0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, radii: list[float], turn: float) -> list[tuple[float, float]]:
    angles = turn + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]


def _draw(draw: ImageDraw.ImageDraw, cls: int, box: list[int], colour: tuple[int, ...]) -> None:
    """Draw class `cls` (1-based) filling the box [x, y, w, h]."""
    x, y, w, h = box
    x1, y1 = x + w - 1, y + h - 1
    cx, cy, r = x + (w - 1) / 2, y + (h - 1) / 2, (min(w, h) - 1) / 2
    if cls == 1:
        draw.ellipse([x, y, x1, y1], outline=colour, width=max(2, w // 5))
    elif cls == 2:
        draw.polygon(_polygon(cx, cy, [r, r * 0.45] * 5, -np.pi / 2), fill=colour)
    elif cls == 3:
        draw.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=colour)
    elif cls == 4:
        draw.polygon(_polygon(cx, cy, [r] * 6, 0.0), fill=colour)
    else:
        draw.rectangle([x, y, x1, y1], fill=colour)


def _place(rng: np.random.Generator, cls: int, w: int, h: int, boxes: list[list[int]]) -> list[int] | None:
    for _ in range(50):
        s = int(rng.integers(int(0.14 * min(w, h)), int(0.4 * min(w, h)) + 1))
        bw, bh = (s, s) if cls != 5 else ((s, max(6, s // 3)) if rng.random() < 0.5 else (max(6, s // 3), s))
        box = [int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1)), bw, bh]
        if all(_iou(box, b) <= 0.2 for b in boxes):
            return box
    return None


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _tight(cls: int, box: list[int]) -> list[float]:
    """[x, y, w, h] of the drawn pixels: the hexagon (pointy left/right) is shorter than its square."""
    x, y, w, h = box
    if cls == 4:
        r = (min(w, h) - 1) / 2
        dy = r * (1 - np.sin(np.pi / 3))
        return [float(x), float(y + dy), float(w), float(h - 2 * dy)]
    if cls == 2:
        r = (min(w, h) - 1) / 2
        pts = np.array(_polygon(x + r, y + r, [r, r * 0.45] * 5, -np.pi / 2))
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
    return [float(v) for v in box]


def _flat_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] uint8: one random colour with a little noise."""
    pixels = rng.integers(0, 256, 3) + rng.normal(0, 8, (h, w, 3))
    return pixels.clip(0, 255).astype(np.uint8)


def _image(rng: np.random.Generator, image_size: int, flat: bool) -> tuple[
        bytes, int, int, list[tuple[int, list[float]]]]:
    w, h = (int(v) for v in rng.integers(image_size, image_size + image_size // 4 + 1, 2))
    pixels = (_flat_background if flat else _background)(rng, w, h)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, list[float]]] = []
    placed: list[list[int]] = []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(1, len(OTHER_CLASSES) + 1))
        box = _place(rng, cls, w, h, placed)
        if box is None:
            continue
        under = pixels[box[1]:box[1] + box[3], box[0]:box[0] + box[2]].reshape(-1, 3).mean(0)
        colour = rng.integers(0, 256, 3)
        for _ in range(20):  # clearly visible against what lies under it
            if np.abs(colour - under).sum() >= 200:
                break
            colour = rng.integers(0, 256, 3)
        _draw(draw, cls, box, tuple(int(c) for c in colour))
        placed.append(box)
        objects.append((cls, _tight(cls, box)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), w, h, objects


def _split(root: Path, name: str, count: int, image_size: int, rng: np.random.Generator, flat: bool) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        data, w, h, objects = _image(rng, image_size, flat)
        (root / name / f"{image_id:06d}.jpg").write_bytes(data)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": w, "height": h})
        anns += [{"id": len(anns) + k + 1, "image_id": image_id, "category_id": cls, "bbox": box,
                  "area": box[2] * box[3], "iscrowd": 0} for k, (cls, box) in enumerate(objects)]
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(OTHER_CLASSES)]
    (root / f"instances_{name}.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": categories}))


def make_other_shapes(root: str | Path, num_train: int, num_val: int = 200, image_size: int = 128,
                      seed: int = 0, flat: bool = False) -> dict[str, str]:
    """Write (or reuse) the set under `root`; the train_images / train_annotations / val_images /
    val_annotations paths, as the benchmarks hand them to `config_from_flags`. `flat`: one-colour backgrounds."""
    root = Path(root)
    params: dict[str, Any] = {"version": _VERSION, "num_train": num_train, "num_val": num_val,
                              "image_size": image_size, "seed": seed}
    if flat:  # only then: the textured sets' markers (and so their folders) stay as they were
        params["flat"] = True
    marker = root / "other_shapes.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        marker.unlink(missing_ok=True)
        _split(root, "val", num_val, image_size, np.random.default_rng([seed, 1]), flat)
        _split(root, "train", num_train, image_size, np.random.default_rng([seed, 0]), flat)
        marker.write_text(json.dumps(params))  # last: marks the folder complete
    return {"train_images": str(root / "train"), "train_annotations": str(root / "instances_train.json"),
            "val_images": str(root / "val"), "val_annotations": str(root / "instances_val.json")}
