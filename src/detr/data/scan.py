"""Check a COCO-format dataset up front, so that nothing fails in the middle of an epoch.

`scan_dataset` reads the annotation file, decodes every listed image once, and decides for each
problem whether it is handled (converted, clipped, kept) or loses data (an image skipped, a box
dropped), or is fatal (`DatasetError` before any training). The dataset is built from the
report: `__getitem__` only ever opens images that decoded here.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from .annotations import (
    annotation_problem,
    box_kind,
    build_target,
    category_names,
    image_problem,
    is_int,
    json_size,
    num_classes_of,
    read_json,
)
from .errors import DatasetError
from .images import ImageProbe, decide_exif, displayed_size, probe_image
from .masks import segmentation_problem

# kind -> (what happens, description). Actions that lose data or look suspicious are warned about.
PROBLEM_KINDS: dict[str, tuple[str, str]] = {
    "duplicate_image_id": ("fatal", "image id listed more than once"),
    "category_out_of_range": ("fatal", "category id outside [0, num_classes)"),
    "image_malformed_entry": ("skipped", "malformed image entry in the JSON"),
    "image_outside_folder": ("skipped", "file_name points outside the image folder"),
    "image_missing": ("skipped", "image file not found"),
    "image_unreadable": ("skipped", "image file cannot be decoded (corrupt, truncated, empty, not an image)"),
    "annotation_malformed": ("dropped", "malformed annotation entry"),
    "annotation_unknown_image": ("dropped", "annotation of an image id not in 'images'"),
    "annotation_of_skipped_image": ("dropped", "annotation of a skipped image"),
    "box_degenerate": ("dropped", "box with zero or negative width/height"),
    "segmentation_malformed": ("dropped", "annotation whose segmentation is not polygons or an RLE of its image"),
    # COCO panoptic (data/panoptic.py)
    "panoptic_unannotated": ("skipped", "image without a panoptic annotation (segments_info)"),
    "panoptic_malformed": ("dropped", "malformed panoptic annotation entry"),
    "png_missing": ("skipped", "panoptic PNG not found"),
    "png_unreadable": ("skipped", "panoptic PNG cannot be decoded or is not RGB"),
    "png_size_mismatch": ("skipped", "panoptic PNG size differs from its image"),
    "segment_malformed": ("dropped", "malformed or duplicated entry of segments_info"),
    "segment_unknown_category": ("dropped", "segment whose category_id is not in 'categories'"),
    "segment_not_in_png": ("dropped", "segment of segments_info with no pixel in the PNG"),
    "segment_not_in_json": ("dropped", "segment id in the PNG but not in segments_info (pixels left unlabelled)"),
    "box_outside": ("dropped", "box entirely outside its image"),
    "size_mismatch": ("kept", "image size differs from width/height in the JSON (boxes clipped to the image)"),
    "exif_ignored": ("kept", "EXIF rotation ignored: the JSON size matches the stored pixels"),
    "category_unlisted": ("kept", "category id used by annotations but not in 'categories'"),
    "annotation_id_fixed": ("fixed", "annotation id missing or duplicated, renumbered"),
    "category_malformed": ("ignored", "malformed entry in 'categories'"),
    "box_clipped": ("clipped", "box partly outside its image, clipped"),
    "crowd": ("ignored", "crowd annotation (not trained on, kept for evaluation)"),
    "no_annotations": ("kept", "image without boxes (kept as a negative example)"),
    "image_converted": ("converted", "image converted to 8-bit RGB"),
    "exif_applied": ("converted", "EXIF orientation applied"),
}
_WARN_ACTIONS = {"skipped", "dropped", "fixed"}
_WARN_KINDS = {"size_mismatch", "exif_ignored", "category_unlisted"}
MAX_EXAMPLES = 3
MAX_NUM_CLASSES = 100_000  # a guard against absurd ids making a giant classifier


@dataclass
class Problem:
    """How often one kind of problem occurred, with the first few examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ImageRecord:
    """A usable image: its file, displayed size, EXIF decision and official target (numpy)."""

    file: Path
    width: int
    height: int
    apply_exif: bool
    # boxes [N, 4] xyxy pixels, labels [N], area [N], iscrowd [N] (+ segmentation [N] objects with masks)
    target: dict[str, np.ndarray]


@dataclass
class ScanReport:
    """Result of `scan_dataset`: usable image ids, their records, and every problem found."""

    images_dir: Path
    ann_file: Path
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    num_images_listed: int = 0
    num_annotations_listed: int = 0
    image_ids: list[int] = field(default_factory=list)
    records: dict[int, ImageRecord] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)
    coco_dataset: dict[str, Any] = field(default_factory=dict)  # cleaned GT for COCOeval

    def add(self, kind: str, example: str) -> None:
        """Count one occurrence of `kind` (a key of PROBLEM_KINDS)."""
        problem = self.problems.setdefault(kind, Problem())
        problem.count += 1
        if len(problem.examples) < MAX_EXAMPLES:
            problem.examples.append(example)

    def summary(self, kinds: set[str] | None = None) -> str:
        """Readable report: totals, then one line per problem kind with examples."""
        boxes = sum(len(r.target["labels"]) for r in self.records.values())
        lines = [f"dataset scan of {self.ann_file} (images in {self.images_dir}):",
                 f"  {self.num_images_listed} images listed, {len(self.image_ids)} usable; "
                 f"{self.num_annotations_listed} annotations, {boxes} boxes for training; "
                 f"{self.num_classes} classes"]
        for kind, (action, text) in PROBLEM_KINDS.items():
            p = self.problems.get(kind)
            if p is None or (kinds is not None and kind not in kinds):
                continue
            lines.append(f"  {action:<9} {p.count:>6}  {text}  (e.g. {'; '.join(p.examples)})")
        return "\n".join(lines)

    def fatal_kinds(self) -> set[str]:
        return {k for k in self.problems if PROBLEM_KINDS[k][0] == "fatal"}

    def warn(self) -> None:
        """One warning that counts everything skipped, dropped or suspicious (nothing if clean)."""
        kinds = {k for k in self.problems if PROBLEM_KINDS[k][0] in _WARN_ACTIONS or k in _WARN_KINDS}
        if kinds:
            warnings.warn(self.summary(kinds), UserWarning, stacklevel=2)

    def coco(self) -> Any:
        """A pycocotools COCO object over the usable images (for COCOeval)."""
        from pycocotools.coco import COCO

        if not self.coco_dataset:
            raise ValueError(f"{self.ann_file}: scanned with keep_coco=False; no ground truth kept for evaluation")
        coco = COCO()
        coco.dataset = self.coco_dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


def is_relative_file(name: str) -> bool:
    """True when `name` stays inside the image folder (no absolute path, no '..')."""
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            return False
    return True


def check_images(report: ScanReport, data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Well-formed image entries by id; duplicates are fatal, the rest skipped with a count."""
    entries: dict[int, dict[str, Any]] = {}
    for img in data["images"]:
        problem = image_problem(img)
        if problem is not None:
            report.add("image_malformed_entry", problem)
        elif img["id"] in entries:
            report.add("duplicate_image_id", f"id {img['id']} ({img['file_name']})")
        elif not is_relative_file(img["file_name"]):
            report.add("image_outside_folder", img["file_name"])
        else:
            entries[img["id"]] = img
    return entries


def _check_annotations(report: ScanReport, data: dict[str, Any], images: dict[int, Any],
                       listed: set[int]) -> dict[int, list[dict[str, Any]]]:
    """Well-formed annotations grouped by image id; out-of-range categories are fatal."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        problem = annotation_problem(ann)
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if problem is not None:
            report.add("annotation_malformed", f"annotation {ann_id!r}: {problem}")
            continue
        cat = ann["category_id"]
        if not 0 <= cat < report.num_classes:
            report.add("category_out_of_range", f"annotation {ann_id!r} has category_id {cat}, "
                       f"num_classes={report.num_classes} (valid: 0..{report.num_classes - 1})")
            continue
        if ann["image_id"] not in images:
            report.add("annotation_unknown_image", f"annotation {ann_id!r} -> image {ann['image_id']}")
            continue
        if cat not in listed:
            report.add("category_unlisted", f"category_id {cat}")
        by_image[ann["image_id"]].append(ann)
    return by_image


def _probe(path: Path, decode: bool = True) -> ImageProbe | str:
    try:
        if not path.is_file():
            return "missing"
        return probe_image(path, decode)
    except OSError as e:  # e.g. a file name too long for the filesystem
        return f"{path}: cannot open ({e})"
    except DatasetError as e:
        return str(e)


def probe_all(images_dir: Path, entries: dict[int, dict[str, Any]],
               workers: int | None, decode: bool) -> dict[int, ImageProbe | str]:
    """Decode every listed image, in threads (PIL releases the GIL while decoding)."""
    ids = list(entries)
    paths = [images_dir / entries[i]["file_name"] for i in ids]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 16:
        results = [_probe(p, decode) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_probe, paths, [decode] * len(paths), chunksize=16))
    return dict(zip(ids, results))


def decide_size(report: ScanReport, entry: dict[str, Any], probe: ImageProbe) -> tuple[int, int, bool]:
    """(width, height, apply_exif) of one decoded image as the dataset returns it; counts what changed."""
    name = entry["file_name"]
    declared = json_size(entry)
    apply_exif = decide_exif(probe, declared)
    if probe.orientation != 1:
        report.add("exif_applied" if apply_exif else "exif_ignored", f"{name} (orientation {probe.orientation})")
    if probe.mode != "RGB":
        report.add("image_converted", f"{name} ({probe.mode})")
    width, height = displayed_size(probe, apply_exif)
    if declared is not None and declared != (width, height):
        report.add("size_mismatch", f"{name}: JSON {declared[0]}x{declared[1]}, file {width}x{height}")
    return width, height, apply_exif


def _with_masks(report: ScanReport, anns: list[dict[str, Any]], name: str, width: int,
                height: int) -> list[dict[str, Any]]:
    """The annotations whose segmentation makes a mask of this image (crowds are not trained on)."""
    kept = []
    for ann in anns:
        problem = None if ann.get("iscrowd", 0) else segmentation_problem(ann.get("segmentation"), height, width)
        if problem is not None:
            report.add("segmentation_malformed", f"annotation {ann.get('id')!r} in {name}: {problem}")
        else:
            kept.append(ann)
    return kept


def _add_record(report: ScanReport, entry: dict[str, Any], probe: ImageProbe,
                anns: list[dict[str, Any]], masks: bool) -> list[dict[str, Any]]:
    """Decide EXIF and size for one decoded image, count its box problems, store its target.

    Returns the annotations kept (with `masks`, those without a usable segmentation are dropped).
    """
    name = entry["file_name"]
    width, height, apply_exif = decide_size(report, entry, probe)
    if masks:
        anns = _with_masks(report, anns, name, width, height)
    for ann in anns:
        if ann.get("iscrowd", 0):
            report.add("crowd", f"annotation {ann.get('id')!r} in {name}")
            continue
        kind = box_kind(ann["bbox"], width, height)
        if kind != "ok":
            report.add(f"box_{kind}", f"annotation {ann.get('id')!r} in {name}: bbox {ann['bbox']}")
    target = build_target(anns, width, height, masks=masks)
    if len(target["boxes"]) == 0:
        report.add("no_annotations", name)
    report.records[entry["id"]] = ImageRecord(report.images_dir / name, width, height, apply_exif, target)
    report.image_ids.append(entry["id"])
    return anns


def _clean_coco(report: ScanReport, data: dict[str, Any], entries: dict[int, dict[str, Any]],
                by_image: dict[int, list[dict[str, Any]]], names: dict[int, str]) -> dict[str, Any]:
    """The annotation file restricted to usable images, with the fields COCOeval needs filled in."""
    images, anns, seen = [], [], set()
    next_id = 1 + max((a["id"] for v in by_image.values() for a in v if is_int(a.get("id"))), default=0)
    for image_id in report.image_ids:
        rec = report.records[image_id]
        images.append({**entries[image_id], "width": rec.width, "height": rec.height})
        for ann in by_image.get(image_id, []):
            ann = {**ann, "iscrowd": int(ann.get("iscrowd", 0))}
            ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
            if not is_int(ann.get("id")) or ann["id"] in seen:
                report.add("annotation_id_fixed", f"annotation {ann.get('id')!r} -> {next_id}")
                ann["id"], next_id = next_id, next_id + 1
            seen.add(ann["id"])
            anns.append(ann)
    used = {a["category_id"] for a in anns}
    cats = [{"id": i, "name": n} for i, n in sorted(names.items())]
    cats += [{"id": i, "name": f"class_{i}"} for i in sorted(used - set(names))]
    out = {"images": images, "annotations": anns, "categories": cats}
    if isinstance(data.get("info"), dict):
        out["info"] = data["info"]
    return out


def resolve_num_classes(data: dict[str, Any], ann_file: Path, num_classes: int | None) -> int:
    """`num_classes`, checked, or max category id + 1 when None."""
    if num_classes is None:
        num_classes = num_classes_of(data, ann_file)
        if num_classes > MAX_NUM_CLASSES:
            raise DatasetError(f"{ann_file}: largest category id is {num_classes - 1}; ids above "
                               f"{MAX_NUM_CLASSES - 1} are not supported (renumber the categories)")
    if not is_int(num_classes) or not 1 <= num_classes <= MAX_NUM_CLASSES:
        raise DatasetError(f"num_classes must be an integer in [1, {MAX_NUM_CLASSES}], got {num_classes!r}")
    return num_classes


def scan_dataset(images_dir: str | Path, ann_file: str | Path, num_classes: int | None = None,
                 workers: int | None = None, keep_coco: bool = True, decode: bool = True,
                 masks: bool = False) -> ScanReport:
    """Check an image folder + COCO instances JSON; return what is usable and what was wrong.

    Args:
        images_dir: folder that the JSON's `file_name`s are relative to.
        ann_file: COCO instances JSON.
        num_classes: labels must lie in [0, num_classes); None derives max category id + 1.
        workers: threads that decode images (default: up to 8).
        keep_coco: keep the cleaned annotation dict for `report.coco()` (evaluation); False saves
            memory for a large training set.
        decode: decode every image (about 1-3 ms each per thread). False reads headers only:
            much faster on COCO-sized sets, but a truncated or corrupt file is then found only
            when `__getitem__` reaches it (a DatasetError naming the file, mid-epoch).
        masks: keep each box's instance segmentation (polygons or RLE) for mask targets; an
            annotation whose segmentation is missing or malformed is dropped with a count.

    Raises:
        DatasetError: a missing folder or file, malformed JSON, a category id >= num_classes,
            duplicate image ids, or no usable image; the message names the file and the problem.
    """
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: image folder not found")
    data = read_json(ann_file)
    report = ScanReport(images_dir, ann_file, num_images_listed=len(data["images"]),
                        num_annotations_listed=len(data["annotations"]))
    names = category_names(data)
    for cat in data.get("categories", []):
        if not (isinstance(cat, dict) and is_int(cat.get("id")) and cat["id"] >= 0):
            report.add("category_malformed", repr(cat)[:80])
    if not data["images"]:
        raise DatasetError(f"{ann_file}: the dataset is empty (no images listed)")
    report.num_classes = resolve_num_classes(data, ann_file, num_classes)
    report.class_names = [names.get(i, "N/A") for i in range(report.num_classes)]
    entries = check_images(report, data)
    by_image = _check_annotations(report, data, entries, set(names))
    if report.fatal_kinds():
        raise DatasetError(f"{ann_file}: cannot train on this dataset:\n"
                           + report.summary(report.fatal_kinds()))
    for image_id, result in probe_all(images_dir, entries, workers, decode).items():
        name = entries[image_id]["file_name"]
        if isinstance(result, str):
            report.add("image_missing" if result == "missing" else "image_unreadable",
                       name if result == "missing" else result)
            for ann in by_image.pop(image_id, []):
                report.add("annotation_of_skipped_image", f"annotation {ann.get('id')!r} in {name}")
        else:
            by_image[image_id] = _add_record(report, entries[image_id], result, by_image.get(image_id, []), masks)
    if not report.image_ids:
        raise DatasetError(f"{ann_file}: no usable image in {images_dir}:\n{report.summary()}")
    if keep_coco:
        report.coco_dataset = _clean_coco(report, data, entries, by_image, names)
    return report
