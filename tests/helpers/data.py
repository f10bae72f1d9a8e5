"""Small writers shared by the data tests (COCO JSON, images)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image


def save_coco(path: Path, images: list[Any], annotations: list[Any], categories: list[Any] | None = None) -> Path:
    """Write a COCO instances JSON; categories default to ids 1..3 named a, b, c."""
    if categories is None:
        categories = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def image_entry(image_id: int, file_name: str, width: int | None = None, height: int | None = None) -> dict:
    entry: dict[str, Any] = {"id": image_id, "file_name": file_name}
    if width is not None:
        entry.update(width=width, height=height)
    return entry


def ann(ann_id: int, image_id: int, bbox: list[float], category_id: int = 1, **extra: Any) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
