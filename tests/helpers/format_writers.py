"""The tests' own writers of dataset layouts (COCO 2017, Roboflow, YOLO, VOC) from reference COCO records.

Independent of detr's readers: each writes the layout as its tool documents it, from `Reference` records
(integer pixel boxes, so that VOC's 1-based inclusive coordinates are exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class Reference:
    """COCO records per split: images (file_name, width, height) and boxes (file_name, category id, xywh)."""

    categories: dict[int, str]
    images: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    boxes: dict[str, list[tuple[str, int, list[float]]]] = field(default_factory=dict)


def reference(ids: tuple[int, ...] = (1, 7, 1000), names: tuple[str, ...] = ("cat", "dog", "bird")) -> Reference:
    """Two train and two val images of different sizes, boxes of every class."""
    ref = Reference(dict(zip(ids, names)))
    sizes = {"train": [("a.png", 64, 48), ("b.png", 80, 64)], "val": [("c.png", 72, 56), ("d.png", 64, 64)]}
    for split, images in sizes.items():
        ref.images[split] = images
        ref.boxes[split] = []
        for n, (name, _, _) in enumerate(images):
            for k, cid in enumerate(ids):
                x, y = 2 + 5 * k + n, 3 + 4 * k
                ref.boxes[split].append((name, cid, [x, y, 10 + 3 * k, 8 + 2 * k + n]))
    return ref


def save_png(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 90, 160)).save(path)


def coco_dict(ref: Reference, split: str, categories: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ids = {name: i + 1 for i, (name, _, _) in enumerate(ref.images[split])}
    images = [{"id": ids[n], "file_name": n, "width": w, "height": h} for n, w, h in ref.images[split]]
    anns = [{"id": i + 1, "image_id": ids[n], "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (n, c, b) in enumerate(ref.boxes[split])]
    cats = categories or [{"id": c, "name": n, "supercategory": "thing"} for c, n in ref.categories.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco2017(root: Path, ref: Reference) -> Path:
    for split in ("train", "val"):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco_dict(ref, split)))
        for name, w, h in ref.images[split]:
            save_png(root / f"{split}2017" / name, w, h)
    return root


def write_roboflow(root: Path, ref: Reference, super_name: str = "pets") -> Path:
    """Roboflow's export: the dataset's name as category 0, the super-category of every class."""
    cats = [{"id": 0, "name": super_name, "supercategory": "none"}]
    cats += [{"id": c, "name": n, "supercategory": super_name} for c, n in ref.categories.items()]
    for split, folder in (("train", "train"), ("val", "valid")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "_annotations.coco.json").write_text(json.dumps(coco_dict(ref, split, cats)))
        for name, w, h in ref.images[split]:
            save_png(root / folder / name, w, h)
    return root


def write_yolo(root: Path, ref: Reference, names_as_dict: bool = False, with_path: bool = False) -> Path:
    """data.yaml (names in category-id order) + images/{train,val} + labels/{train,val}."""
    order = sorted(ref.categories)
    index = {c: i for i, c in enumerate(order)}
    if names_as_dict:
        names = "names:\n" + "".join(f"  {i}: {ref.categories[c]}\n" for i, c in enumerate(order))
    else:
        names = "names: [" + ", ".join(ref.categories[c] for c in order) + "]\n"
    base = root / "ds" if with_path else root
    path = "path: ds\n" if with_path else ""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(f"{path}train: images/train\nval: images/val\nnc: {len(order)}\n{names}")
    for split in ("train", "val"):
        sizes = {n: (w, h) for n, w, h in ref.images[split]}
        lines: dict[str, list[str]] = {n: [] for n in sizes}
        for name, cid, (x, y, bw, bh) in ref.boxes[split]:
            w, h = sizes[name]
            lines[name].append(f"{index[cid]} {(x + bw / 2) / w:.9f} {(y + bh / 2) / h:.9f} {bw / w:.9f} {bh / h:.9f}")
        for name, (w, h) in sizes.items():
            save_png(base / "images" / split / name, w, h)
            label = base / "labels" / split / (Path(name).stem + ".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines[name]) + "\n")
    return root


def voc_xml(name: str, width: int, height: int, objects: list[tuple[str, list[float], int]]) -> str:
    """One VOC annotation; boxes are COCO xywh pixels, written 1-based inclusive as the VOC devkit."""
    parts = [f"<annotation><folder>VOC</folder><filename>{name}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for cls, (x, y, w, h), difficult in objects:
        parts.append(f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox>"
                     f"<xmin>{int(x) + 1}</xmin><ymin>{int(y) + 1}</ymin><xmax>{int(x + w)}</xmax>"
                     f"<ymax>{int(y + h)}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, ref: Reference, difficult: set[tuple[str, int]] = frozenset()) -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for name, w, h in ref.images[split]:
            objs = [(ref.categories[c], b, int((name, c) in difficult)) for n, c, b in ref.boxes[split] if n == name]
            (root / "Annotations" / f"{Path(name).stem}.xml").write_text(voc_xml(name, w, h, objs))
            save_png(root / "JPEGImages" / name, w, h)
        stems = "\n".join(Path(n).stem for n, _, _ in ref.images[split])
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(stems + "\n")
    return root
