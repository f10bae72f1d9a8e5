"""Pascal VOC layout: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/{train,val}.txt`.

Boxes: VOC's `xmin..xmax` are 1-based pixel indices, both ends inclusive, so the COCO box is
`[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]` (the VOC devkit's and detectron2's reading).
Difficult objects are kept with COCO's `iscrowd=1`, which COCOeval ignores (a detection matched to one is
neither a true nor a false positive, as in the VOC evaluation) and training does not learn from.
Classes: the object names found, sorted (for VOC 2007/2012 the usual 20-class order), ids 0..K-1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .records import DatasetRecords, FormatProblems, SplitRecords, image_size

log = logging.getLogger(__name__)

VOC_SPLITS = {"train": "train", "val": "val"}


def _parse(path: Path) -> Any:
    """The XML tree's root; defusedxml when installed (it refuses entity tricks), else the standard library."""
    try:
        from defusedxml.ElementTree import parse
    except ImportError:
        from xml.etree.ElementTree import parse
    return parse(path).getroot()


def read_voc(root: Path) -> DatasetRecords:
    """Read a VOC folder; a missing split list, a malformed XML or a box with no area is named by file."""
    problems = FormatProblems(root)
    parsed: dict[str, list[tuple[Path, list[dict[str, Any]], tuple[int, int] | None]]] = {}
    for split, name in VOC_SPLITS.items():
        listing = root / "ImageSets" / "Main" / f"{name}.txt"
        if not listing.is_file():
            problems.add("missing split", f"{split}: {listing} not found")
            continue
        ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        parsed[split] = [_read_xml(root, i, problems) for i in ids]
    names = sorted({obj["name"] for items in parsed.values() for _, objs, _ in items for obj in objs})
    categories = dict(enumerate(names))
    index = {n: i for i, n in categories.items()}
    splits = {split: _split(root, items, index, problems) for split, items in parsed.items()}
    problems.finish("voc")
    return DatasetRecords("voc", root, categories, splits)


def _read_xml(root: Path, image_id: str,
              problems: FormatProblems) -> tuple[Path, list[dict[str, Any]], tuple[int, int] | None]:
    """(image path, objects, size from the XML) of one annotation file; problems are named by file."""
    xml = root / "Annotations" / f"{image_id}.xml"
    image = root / "JPEGImages" / f"{image_id}.jpg"
    if not xml.is_file():
        problems.add("annotation file not found", str(xml))
        return image, [], None
    try:
        node = _parse(xml)
    except Exception as e:  # ParseError, defusedxml's refusals, OSError: all name the file
        problems.add("malformed XML", f"{xml}: {' '.join(str(e).split())[:80]}")
        return image, [], None
    filename = (node.findtext("filename") or "").strip()
    if filename and (root / "JPEGImages" / filename).is_file():
        image = root / "JPEGImages" / filename
    elif not image.is_file():  # another suffix than .jpg
        image = next(iter(sorted((root / "JPEGImages").glob(f"{image_id}.*"))), image)
    size = _size(node)
    objects = []
    for n, obj in enumerate(node.iter("object")):
        parsed = _object(obj)
        if isinstance(parsed, str):
            problems.add("malformed object", f"{xml}: object {n}: {parsed}")
        else:
            objects.append(parsed)
    return image, objects, size


def _size(node: Any) -> tuple[int, int] | None:
    try:
        return int(float(node.findtext("size/width"))), int(float(node.findtext("size/height")))
    except (TypeError, ValueError):
        return None


def _object(obj: Any) -> dict[str, Any] | str:
    """An object's name, 1-based inclusive box and difficult flag, or what is wrong with it."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        return "no <name>"
    try:
        box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError):
        return f"{name}: <bndbox> needs numeric xmin, ymin, xmax, ymax"
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
    return {"name": name, "box": box, "difficult": difficult}


def _split(root: Path, items: list[tuple[Path, list[dict[str, Any]], tuple[int, int] | None]],
           index: dict[str, int], problems: FormatProblems) -> SplitRecords:
    folder = root / "JPEGImages"
    split = SplitRecords(folder, root / "ImageSets" / "Main")
    for image, objects, xml_size in items:
        size = image_size(image) if image.is_file() else xml_size  # a missing image: the scan names it
        width, height = size or (0, 0)
        image_id = split.add_image(image.relative_to(folder).as_posix(), width, height)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            w, h = x1 - x0 + 1, y1 - y0 + 1  # inclusive pixel indices
            if x1 <= x0 or y1 <= y0:  # xmax == xmin is a click, not a 1-pixel object
                problems.add("box with zero area", f"{root / 'Annotations'}/{image.stem}.xml: {obj['name']} "
                             f"{obj['box']}", fatal=False)
                continue
            split.add_box(image_id, index[obj["name"]], [x0 - 1, y0 - 1, w, h], iscrowd=int(obj["difficult"]))
    return split
