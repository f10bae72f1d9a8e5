"""Reading a COCO instances JSON defensively, and building DETR targets from its boxes.

Targets follow the official code: crowd boxes dropped, [x, y, w, h] -> [x0, y0, x1, y1],
clipped to the image, boxes with no area left dropped, category ids used as labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError


def read_json(ann_file: str | Path) -> dict[str, Any]:
    """Load an annotation file and check its top-level structure.

    Raises:
        DatasetError: missing/unreadable file, invalid JSON, or not a COCO instances file.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read annotation file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images' and 'annotations', "
                           f"got a {type(data).__name__}")
    for key in ("images", "annotations"):
        if key not in data:
            raise DatasetError(f"{path}: not a COCO instances file: no '{key}' list")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    if "categories" in data and not isinstance(data["categories"], list):
        raise DatasetError(f"{path}: 'categories' must be a list, got {type(data['categories']).__name__}")
    return data


def is_int(value: Any) -> bool:
    """A JSON integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (bool is not one)."""
    if isinstance(value, bool):
        return False
    # an int is always finite (and math.isfinite overflows on one above float's range)
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def annotation_problem(ann: Any) -> str | None:
    """Why an annotation entry cannot be used, or None if it is well-formed."""
    if not isinstance(ann, dict):
        return f"entry is a {type(ann).__name__}, not an object"
    if not is_int(ann.get("image_id")):
        return f"image_id {ann.get('image_id')!r} is not an integer"
    if not is_int(ann.get("category_id")):
        return f"category_id {ann.get('category_id')!r} is not an integer"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
        return f"bbox {bbox!r} is not 4 finite numbers"
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        return f"iscrowd {ann['iscrowd']!r} is not 0 or 1"
    if "area" in ann and not is_number(ann["area"]):
        return f"area {ann['area']!r} is not a finite number"
    return None


def image_problem(img: Any) -> str | None:
    """Why an image entry cannot be used, or None if it is well-formed."""
    if not isinstance(img, dict):
        return f"entry is a {type(img).__name__}, not an object"
    if not is_int(img.get("id")):
        return f"id {img.get('id')!r} is not an integer"
    name = img.get("file_name")
    if not isinstance(name, str) or not name or "\x00" in name:
        return f"file_name {name!r} is not a file name"
    return None


def json_size(img: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) declared by an image entry, None when absent or not positive integers."""
    w, h = img.get("width"), img.get("height")
    if is_int(w) and is_int(h) and w > 0 and h > 0:
        return w, h
    return None


def box_kind(bbox: list[float], width: int, height: int) -> str:
    """'ok', 'clipped' (partly outside), 'outside' (nothing left) or 'degenerate' (w or h <= 0)."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "degenerate"
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return "outside"
    return "ok" if (x0, y0, x1, y1) == (x, y, x + w, y + h) else "clipped"


def build_target(anns: list[dict[str, Any]], width: int, height: int, masks: bool = False) -> dict[str, np.ndarray]:
    """Official target building for one image of size (width, height).

    Returns numpy arrays: boxes [N, 4] float32 xyxy pixels, labels [N] int64, area [N] float32,
    iscrowd [N] int64, where N counts the non-crowd boxes with positive area after clipping; with
    `masks`, also segmentation [N] (objects: each box's polygons or RLE, decoded when loaded).
    """
    anns = [a for a in anns if not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)  # [N, 4] xywh
    boxes[:, 2:] += boxes[:, :2]  # xyxy
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
    area = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float32)
    target = {"boxes": boxes[keep], "labels": labels[keep], "area": area[keep],
              "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64)}
    if masks:
        segmentation = np.empty(len(anns), dtype=object)  # filled one by one: polygons are ragged lists
        for i, a in enumerate(anns):
            segmentation[i] = a["segmentation"]
        target["segmentation"] = segmentation[keep]
    return target


def category_names(data: dict[str, Any]) -> dict[int, str]:
    """{id: name} of the well-formed entries of 'categories' (missing names become 'class_<id>')."""
    names: dict[int, str] = {}
    for cat in data.get("categories", []):
        if isinstance(cat, dict) and is_int(cat.get("id")) and cat["id"] >= 0:
            name = cat.get("name")
            names[cat["id"]] = name if isinstance(name, str) and name else f"class_{cat['id']}"
    return names


def num_classes_from_annotations(ann_file: str | Path) -> int:
    """max category id + 1 over 'categories' and the annotations (official convention).

    Raises:
        DatasetError: unreadable file, or no category id at all.
    """
    return num_classes_of(read_json(ann_file), ann_file)


def num_classes_of(data: dict[str, Any], ann_file: str | Path) -> int:
    """`num_classes_from_annotations` for an already loaded file."""
    ids = set(category_names(data))
    ids.update(a["category_id"] for a in data["annotations"]
               if isinstance(a, dict) and is_int(a.get("category_id")) and a["category_id"] >= 0)
    if not ids:
        raise DatasetError(f"{ann_file}: no category ids in 'categories' or 'annotations'; "
                           "cannot derive num_classes")
    return max(ids) + 1


def class_names_from_annotations(ann_file: str | Path) -> list[str]:
    """Class names indexed by category id, 'N/A' for ids with no category entry."""
    data = read_json(ann_file)
    names = category_names(data)
    out = ["N/A"] * num_classes_of(data, ann_file)
    for i, name in names.items():
        out[i] = name
    return out
