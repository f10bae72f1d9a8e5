"""The built-in demo dataset: coloured shapes on varied backgrounds, written in COCO format.

Deterministic (same seed and sizes -> same bytes), generated in about a second, and small enough
that a small DETR learns it on two CPU cores in minutes. Category ids start at 1 as in COCO, so
`num_classes = len(DEMO_CLASSES) + 1`.

The panoptic variant (`panoptic=True`): the shapes are things with exact masks, and the background
is split into two or three stuff regions (bands), each one of three textures. Written as COCO
panoptic (a PNG of segment ids per image + `panoptic_<split>.json`) and as COCO instances whose
segmentations are compressed RLE masks of the visible part of each shape (things only).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..checkpoint import write_bytes
from .masks import encode_id_png

DEMO_CLASSES = ("circle", "square", "triangle", "cross")  # category ids 1, 2, 3, 4
DEMO_NUM_CLASSES = len(DEMO_CLASSES) + 1
_FORMAT_VERSION = 1  # bump when the generator changes, so old folders are regenerated
_PANOPTIC_VERSION = 2  # the same for the panoptic variant (2: unique instance annotation ids)
_MAX_OVERLAP_IOU = 0.25
# The panoptic variant: the shapes are things; stuff ids 5-7 follow, num_classes = len(PANOPTIC_CLASSES) + 1
STUFF_CLASSES = ("plain", "stripes", "checks")  # category ids 5, 6, 7
PANOPTIC_CLASSES = DEMO_CLASSES + STUFF_CLASSES
PANOPTIC_NUM_CLASSES = len(PANOPTIC_CLASSES) + 1
_SEGMENT_ID_STEP = 1_000_003  # spreads segment ids over the three colour channels of the PNG


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


def _draw(draw: ImageDraw.ImageDraw, cls: int, x: int, y: int, s: int, colour: tuple[int, ...] | int) -> None:
    """Draw shape `cls` (1-based id) filling the box [x, x + s) x [y, y + s) (an int colour: a label map)."""
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


def _visible_colour(rng: np.random.Generator, pixels: np.ndarray, box: list[int]) -> tuple[int, int, int]:
    """A random colour clearly visible against what lies under the square `box` (up to 20 more draws)."""
    x, y, s, _ = box
    under = pixels[y:y + s, x:x + s].reshape(-1, 3).mean(0)
    colour = rng.integers(0, 256, 3)
    for _ in range(20):
        if np.abs(colour - under).sum() >= 180:
            break
        colour = rng.integers(0, 256, 3)
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


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
        _draw(draw, cls, x, y, s, _visible_colour(rng, pixels, box))
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


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours far enough apart for a texture to show."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    for _ in range(20):
        if np.abs(c0 - c1).sum() >= 150:
            break
        c1 = rng.integers(0, 256, 3)
    return c0, c1


def _texture(rng: np.random.Generator, kind: int, w: int, h: int) -> np.ndarray:
    """[h, w, 3] float: stuff class `kind` (0 plain, 1 stripes, 2 checks) in random colours."""
    c0, c1 = _two_colours(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:
        second = np.zeros((h, w), dtype=bool)
    elif kind == 1:
        period, angle = int(rng.integers(6, 13)), rng.uniform(0, np.pi)
        second = (xx * np.cos(angle) + yy * np.sin(angle)) % period < period / 2
    else:
        cell = int(rng.integers(5, 11))
        second = ((xx // cell + yy // cell) % 2).astype(bool)
    return np.where(second[..., None], c1, c0) + rng.normal(0, 6, (h, w, 3))


def _stuff(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The background ([h, w, 3] uint8) and its stuff category per pixel ([h, w] int, ids 5-7).

    Two or three bands across the image in a random direction, each of a different stuff class.
    """
    k = int(rng.integers(2, 4))
    kinds = rng.permutation(len(STUFF_CLASSES))[:k]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    cuts = [rng.uniform(0.3, 0.7)] if k == 2 else [rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)]
    band = np.searchsorted(np.array(cuts), t)  # [h, w] in 0..k-1
    pixels = np.zeros((h, w, 3))
    for i, kind in enumerate(kinds):
        pixels = np.where((band == i)[..., None], _texture(rng, int(kind), w, h), pixels)
    category = (len(DEMO_CLASSES) + 1 + kinds)[band]
    return pixels.clip(0, 255).astype(np.uint8), category


def _make_panoptic_image(rng: np.random.Generator, image_size: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """One JPEG, its [h, w] thing map (0: background, j: the j-th shape) and [h, w] stuff categories."""
    w, h = (int(v) for v in rng.integers(image_size, image_size + image_size // 4 + 1, 2))
    pixels, stuff = _stuff(rng, w, h)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    things = Image.new("I", (w, h), 0)  # the same drawing calls give the exact mask of each shape
    draw_things = ImageDraw.Draw(things)
    boxes: list[list[int]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 7))):
        box = _place(rng, w, h, boxes)
        if box is None:
            continue
        cls = int(rng.integers(1, len(DEMO_CLASSES) + 1))
        x, y, s, _ = box
        _draw(draw, cls, x, y, s, _visible_colour(rng, pixels, box))
        _draw(draw_things, cls, x, y, s, len(boxes) + 1)
        boxes.append(box)
        classes.append(cls)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    thing_map = np.asarray(things, dtype=np.int64)  # [h, w]
    category = np.where(thing_map > 0, np.array([0, *classes])[thing_map], stuff)  # [h, w]
    return buf.getvalue(), thing_map, category


def _segments(thing_map: np.ndarray, category: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The [h, w] segment-id map and segments_info: each visible shape, then each stuff class present."""
    ids = np.zeros(thing_map.shape, dtype=np.int64)
    info: list[dict[str, Any]] = []
    masks = [(thing_map == j) for j in range(1, int(thing_map.max()) + 1)]
    masks += [(thing_map == 0) & (category == c) for c in range(len(DEMO_CLASSES) + 1, PANOPTIC_NUM_CLASSES)]
    for mask in masks:
        if not mask.any():  # a shape hidden by later ones, or a band covered by shapes
            continue
        seg_id = (len(info) + 1) * _SEGMENT_ID_STEP
        ids[mask] = seg_id
        ys, xs = np.nonzero(mask)
        info.append({"id": seg_id, "category_id": int(category[ys[0], xs[0]]), "iscrowd": 0,
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                     "area": int(mask.sum())})
    return ids, info


def _instance(image_id: int, ann_id: int, ids: np.ndarray, seg: dict[str, Any]) -> dict[str, Any]:
    """The COCO instance annotation of a thing segment, its mask as a compressed RLE."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": seg["category_id"], "segmentation": rle,
            "bbox": [float(v) for v in seg["bbox"]], "area": float(seg["area"]), "iscrowd": 0}


def _write_panoptic_split(root: Path, split: int, name: str, count: int, image_size: int, seed: int) -> None:
    """Write `count` images into root/name/, their PNGs into root/panoptic_name/, and the two JSONs."""
    rng = np.random.default_rng([seed, split, 1])
    folder, png_folder = root / name, root / f"panoptic_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    png_folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    for image_id in range(1, count + 1):
        data, thing_map, category = _make_panoptic_image(rng, image_size)
        ids, info = _segments(thing_map, category)
        h, w = ids.shape
        write_bytes(folder / f"{image_id:06d}.jpg", data)
        write_bytes(png_folder / f"{image_id:06d}.png", encode_id_png(ids))
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": w, "height": h})
        panoptic.append({"image_id": image_id, "file_name": f"{image_id:06d}.png", "segments_info": info})
        shapes = [s for s in info if s["category_id"] <= len(DEMO_CLASSES)]
        instances += [_instance(image_id, len(instances) + k + 1, ids, s) for k, s in enumerate(shapes)]
    info_entry = {"description": f"detr synthetic shapes panoptic demo ({name})"}
    things = [{"id": i + 1, "name": n, "supercategory": "shape", "isthing": 1} for i, n in enumerate(DEMO_CLASSES)]
    stuff = [{"id": len(DEMO_CLASSES) + i + 1, "name": n, "supercategory": "texture", "isthing": 0}
             for i, n in enumerate(STUFF_CLASSES)]
    write_bytes(root / f"instances_{name}.json", json.dumps(
        {"info": info_entry, "images": images, "annotations": instances, "categories": things}).encode())
    write_bytes(root / f"panoptic_{name}.json", json.dumps(
        {"info": info_entry, "images": images, "annotations": panoptic, "categories": things + stuff}).encode())


def _is_complete(root: Path, marker: Path, params: dict[str, Any]) -> bool:
    """True when `root` holds a finished dataset made with `params` (every listed file present)."""
    try:
        if json.loads(marker.read_text()) != params:
            return False
        for name in ("train", "val"):
            data = json.loads((root / f"instances_{name}.json").read_text())
            if not all((root / name / img["file_name"]).is_file() for img in data["images"]):
                return False
            if params.get("panoptic"):
                data = json.loads((root / f"panoptic_{name}.json").read_text())
                if not all((root / f"panoptic_{name}" / a["file_name"]).is_file() for a in data["annotations"]):
                    return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def make_demo_dataset(root: str | Path, num_train: int = 256, num_val: int = 64, image_size: int = 128,
                      seed: int = 0, panoptic: bool = False) -> dict[str, Path]:
    """Write (or reuse) the demo dataset under `root`.

    With `panoptic`, the panoptic variant: shapes as things with exact masks on two or three stuff
    regions, as COCO panoptic PNGs + JSON and COCO instances with RLE masks (`_write_panoptic_split`).

    Returns:
        {"root", "train_images", "train_annotations", "val_images", "val_annotations"} paths; with
        `panoptic` also "train_panoptic" / "val_panoptic" (PNG folders) and "train_panoptic_annotations"
        / "val_panoptic_annotations" (JSON).
    """
    if num_train < 1 or num_val < 1 or image_size < 32:
        raise ValueError(f"need num_train >= 1, num_val >= 1, image_size >= 32; got "
                         f"{num_train}, {num_val}, {image_size}")
    root = Path(root)
    paths = {"root": root, "train_images": root / "train", "train_annotations": root / "instances_train.json",
             "val_images": root / "val", "val_annotations": root / "instances_val.json"}
    params: dict[str, Any] = {"version": _FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
                              "image_size": image_size, "seed": seed}
    if panoptic:  # only then: the detection demo's marker (and so its folder) stays as it was
        params["panoptic"] = _PANOPTIC_VERSION
        for name in ("train", "val"):
            paths[f"{name}_panoptic"] = root / f"panoptic_{name}"
            paths[f"{name}_panoptic_annotations"] = root / f"panoptic_{name}.json"
    marker = root / "demo.json"
    if _is_complete(root, marker, params):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    if panoptic:
        _write_panoptic_split(root, 0, "train", num_train, image_size, seed)
        _write_panoptic_split(root, 1, "val", num_val, image_size, seed)
    else:
        _write_split(root, 0, "train", num_train, image_size, seed)
        _write_split(root, 1, "val", num_val, image_size, seed)
    write_bytes(marker, json.dumps(params).encode())  # last: marks the folder complete
    return paths
