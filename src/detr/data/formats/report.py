"""Said before training: the class table and DETR's own pitfalls, each with the flag that fixes it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FEW_BOXES = 10  # a class with fewer training boxes than this is rarely learned


@dataclass
class Geometry:
    """What the pitfalls depend on: queries, the backbone's output stride and the training sizes."""

    num_queries: int
    stride: int
    scales: Sequence[int]
    max_size: int


def box_counts(coco: dict[str, Any]) -> Counter[int]:
    """label -> boxes trained on (crowd / difficult boxes excluded) of a written COCO dict."""
    return Counter(a["category_id"] for a in coco["annotations"] if isinstance(a, dict) and not a.get("iscrowd"))


def class_table(category_ids: Sequence[int], names: Sequence[str], train: dict[str, Any],
                val: dict[str, Any] | None) -> str:
    """label -> dataset id -> name -> boxes in train -> boxes in val, one line per class."""
    tc, vc = box_counts(train), box_counts(val) if val else Counter()
    width = max([len(n) for n in names] + [4])
    lines = [f"  {'label':>5}  {'id':>6}  {'name':<{width}}  {'train':>7}  {'val':>7}"]
    for label, (cid, name) in enumerate(zip(category_ids, names)):
        lines.append(f"  {label:>5}  {cid:>6}  {name:<{width}}  {tc[label]:>7}  {vc[label] if val else '-':>7}")
    return "\n".join(lines)


def log_classes(source: str, category_ids: Sequence[int], names: Sequence[str], train: dict[str, Any],
                val: dict[str, Any] | None) -> None:
    """Log the class table; warn for classes without training boxes, with few, and missing from val."""
    log.info("%s: %d classes (label -> the dataset's category id):\n%s", source, len(category_ids),
             class_table(category_ids, names, train, val))
    tc, vc = box_counts(train), box_counts(val) if val else None
    empty = [names[i] for i in range(len(names)) if tc[i] == 0]
    if empty:
        log.warning("%s: no training boxes for class(es) %s: the model cannot learn them", source, ", ".join(empty))
    few = [f"{names[i]} ({tc[i]})" for i in range(len(names)) if 0 < tc[i] < FEW_BOXES]
    if few:
        log.warning("%s: fewer than %d training boxes for %s: such classes are rarely learned; add examples "
                    "(or train longer with --epochs)", source, FEW_BOXES, ", ".join(few))
    if vc is not None:
        unseen = [names[i] for i in range(len(names)) if tc[i] and not vc[i]]
        if unseen:
            log.warning("%s: the val set has no boxes of %s: their AP is not measured (COCOeval averages the "
                        "classes present)", source, ", ".join(unseen))


def log_pitfalls(source: str, train: dict[str, Any], geometry: Geometry) -> None:
    """Warn about crowded images (more boxes than queries) and boxes smaller than the output stride."""
    per_image = Counter(a["image_id"] for a in train["annotations"] if isinstance(a, dict) and not a.get("iscrowd"))
    crowded = [n for n in per_image.values() if n > geometry.num_queries]
    if crowded:
        log.warning("%s: %d training image(s) hold more boxes than --num_queries %d (the most: %d); at most %d per "
                    "image can be found: raise --num_queries", source, len(crowded), geometry.num_queries,
                    max(crowded), geometry.num_queries)
    sizes = {img["id"]: (img.get("width") or 0, img.get("height") or 0) for img in train["images"]}
    small = total = 0
    top = max(geometry.scales)
    for a in train["annotations"]:
        if not isinstance(a, dict) or a.get("iscrowd") or a.get("image_id") not in sizes:
            continue
        width, height = sizes[a["image_id"]]
        if not width or not height:
            continue
        # the largest training resize: the short side to max(scales), the long side capped at max_size
        s = min(top / min(width, height), geometry.max_size / max(width, height))
        total += 1
        small += min(a["bbox"][2], a["bbox"][3]) * s < geometry.stride
    if small:
        log.warning("%s: %d of %d training boxes are smaller than the backbone's output stride (%d px) even at "
                    "the largest training scale %d: DETR finds such boxes poorly; raise --scales/--max_size, or use "
                    "--dilation (DC5, stride 16)", source, small, total, geometry.stride, top)
