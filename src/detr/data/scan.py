"""Check a COCO-format dataset up front, so that nothing fails in the middle of an epoch.

`scan_dataset` reads the annotation file, decodes every listed image once, and decides for each
problem whether it is handled (converted, clipped, kept) or loses data (an image skipped, a box
dropped), or is fatal (`DatasetError` before any training). The dataset is built from the
report: `__getitem__` only ever opens images that decoded here.

`run_scan` holds the steps every format shares (image entries, fatal problems, threaded decoding,
records); `scan_dataset` (instances) and `scan_panoptic` (data/panoptic.py) add their annotations'
checks and targets.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

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
from .report import ImageRecord, ScanReport

MAX_NUM_CLASSES = 100_000  # a guard against absurd ids making a giant classifier


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


def category_in_range(report: ScanReport, category_id: int, where: str) -> bool:
    """Whether a label lies in [0, num_classes); one outside is counted as fatal."""
    if 0 <= category_id < report.num_classes:
        return True
    report.add("category_out_of_range", f"{where} has category_id {category_id}, num_classes={report.num_classes} "
               f"(valid: 0..{report.num_classes - 1})")
    return False


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
        if not category_in_range(report, cat, f"annotation {ann_id!r}"):
            continue
        if ann["image_id"] not in images:
            report.add("annotation_unknown_image", f"annotation {ann_id!r} -> image {ann['image_id']}")
            continue
        if cat not in listed:
            report.add("category_unlisted", f"category_id {cat}")
        by_image[ann["image_id"]].append(ann)
    return by_image


def _guarded_probe(probe: Callable[[Path, bool], Any], path: Path, decode: bool) -> Any:
    """`probe(path, decode)`, or why the file cannot be used: "missing" or a message naming the file."""
    try:
        if not path.is_file():
            return "missing"
        return probe(path, decode)
    except OSError as e:  # e.g. a file name too long for the filesystem
        return f"{path}: cannot open ({e})"
    except DatasetError as e:
        return str(e)


def probe_files(probe: Callable[[Path, bool], Any], paths: dict[int, Path], workers: int | None,
                decode: bool) -> dict[int, Any]:
    """`probe` every file (a str result: why it cannot be used), in threads (PIL and numpy release the GIL)."""
    ids = list(paths)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(ids) < 16:
        results = [_guarded_probe(probe, paths[i], decode) for i in ids]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(functools.partial(_guarded_probe, probe), [paths[i] for i in ids],
                                    [decode] * len(ids), chunksize=16))
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
    store_record(report, entry, ImageRecord(report.images_dir / name, width, height, apply_exif, target))
    return anns


def _add_records(report: ScanReport, entries: dict[int, dict[str, Any]], by_image: dict[int, list[dict[str, Any]]],
                 decoded: dict[int, ImageProbe], masks: bool) -> dict[int, list[dict[str, Any]]]:
    """Store the records of the decoded images; count the annotations of the others. Returns the kept ones."""
    kept = {}
    for image_id, entry in entries.items():
        if image_id in decoded:
            kept[image_id] = _add_record(report, entry, decoded[image_id], by_image.get(image_id, []), masks)
        else:
            for ann in by_image.get(image_id, []):
                report.add("annotation_of_skipped_image", f"annotation {ann.get('id')!r} in {entry['file_name']}")
    return kept


def store_record(report: ScanReport, entry: dict[str, Any], record: ImageRecord) -> None:
    """Keep one usable image (counted under no_annotations when its target is empty)."""
    if len(record.target["labels"]) == 0:
        report.add("no_annotations", entry["file_name"])
    report.records[entry["id"]] = record
    report.image_ids.append(entry["id"])


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


def check_folders(folders: dict[Path, str]) -> None:
    """Raise DatasetError naming the first of `folders` ({path: what it holds}) that is not a folder."""
    for folder, what in folders.items():
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {what} folder not found")


# A format's own steps: its annotations checked (by image id), and the records stored of the decoded images.
AnnotationCheck = Callable[[ScanReport, dict[str, Any], dict[int, dict[str, Any]]], dict[int, Any]]
RecordAdder = Callable[[ScanReport, dict[int, dict[str, Any]], dict[int, Any], dict[int, ImageProbe]], dict[int, Any]]


def run_scan(report: ScanReport, data: dict[str, Any], num_classes: int | None, names: dict[int, str],
             check_annotations: AnnotationCheck, add_records: RecordAdder, workers: int | None, decode: bool,
             where: str = "") -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
    """The scan every format shares, filling `report`; returns (image entries by id, kept annotations by id).

    Resolves num_classes and the class names, checks the image entries and (`check_annotations`) the
    annotations, raises on anything fatal, decodes every image in threads (the missing and unreadable ones
    counted and skipped), lets `add_records` store the decoded images' records, and raises if none is usable
    (`where` is added to that message).
    """
    ann_file = report.ann_file
    if not data["images"]:
        raise DatasetError(f"{ann_file}: the dataset is empty (no images listed)")
    report.num_classes = resolve_num_classes(data, ann_file, num_classes)
    report.class_names = [names.get(i, "N/A") for i in range(report.num_classes)]
    entries = check_images(report, data)
    by_image = check_annotations(report, data, entries)
    if report.fatal_kinds():
        raise DatasetError(f"{ann_file}: cannot train on this dataset:\n" + report.summary(report.fatal_kinds()))
    paths = {i: report.images_dir / entry["file_name"] for i, entry in entries.items()}
    decoded = {}
    for image_id, probe in probe_files(probe_image, paths, workers, decode).items():
        if not isinstance(probe, str):
            decoded[image_id] = probe
        elif probe == "missing":
            report.add("image_missing", entries[image_id]["file_name"])
        else:
            report.add("image_unreadable", probe)
    kept = add_records(report, entries, by_image, decoded)
    if not report.image_ids:
        raise DatasetError(f"{ann_file}: no usable image in {report.images_dir}{where}:\n{report.summary()}")
    return entries, kept


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
    check_folders({images_dir: "image"})
    data = read_json(ann_file)
    report = ScanReport(images_dir, ann_file, num_images_listed=len(data["images"]),
                        num_annotations_listed=len(data["annotations"]))
    names = category_names(data)
    for cat in data.get("categories", []):
        if not (isinstance(cat, dict) and is_int(cat.get("id")) and cat["id"] >= 0):
            report.add("category_malformed", repr(cat)[:80])
    entries, kept = run_scan(
        report, data, num_classes, names, functools.partial(_check_annotations, listed=set(names)),
        functools.partial(_add_records, masks=masks), workers, decode)
    if keep_coco:
        report.coco_dataset = _clean_coco(report, data, entries, kept, names)
    return report
