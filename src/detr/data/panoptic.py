"""COCO panoptic format: a PNG of segment ids per image and a JSON of `segments_info`, checked up front.

The JSON lists `images`, `annotations` (one per image: `image_id`, the PNG's `file_name` and
`segments_info` entries `{id, category_id, iscrowd, bbox, area}`) and `categories` (`id`, `name`,
`isthing`). Targets follow the official `datasets/coco_panoptic.py`: one binary mask per listed
segment ("masks" [N, H, W]), the category id as label, boxes computed from the masks, and `iscrowd`
and `area` from the JSON. Crowd segments stay in the targets, as there (the official criterion
ignores `iscrowd`). Unlike there, images are matched to annotations by `image_id`, and every problem
is found by the scan (counted in `ScanReport`'s summary), not in the middle of an epoch.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from ..panoptic_ids import MAX_SEGMENT_ID
from .annotations import category_names, is_int, is_number, read_json
from .coco import CocoDetection, Target
from .errors import DatasetError
from .images import ImageProbe
from .masks import coco_mask_results, id_png_size, masks_to_boxes, read_id_png
from .report import ImageRecord, ScanReport
from .scan import (
    category_in_range,
    check_folders,
    decide_size,
    is_relative_file,
    probe_files,
    run_scan,
    store_record,
)
from .transforms import make_transforms

VOID = 0  # the id of unlabelled pixels


@dataclass
class PanopticRecord(ImageRecord):
    """A usable image and its panoptic PNG; `target` holds segment_ids, labels, iscrowd, area [N]."""

    png: Path = Path()


@dataclass
class PanopticReport(ScanReport):
    """`ScanReport` of a panoptic dataset, with its PNG folder and categories (`isthing` included)."""

    png_dir: Path = Path()
    categories: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "name", "isthing"}]

    def panoptic_gt(self) -> dict[str, Any]:
        """The panoptic JSON restricted to the usable images and segments (ground truth for PQ)."""
        if not self.coco_dataset:
            raise ValueError(f"{self.ann_file}: scanned with keep_gt=False; no ground truth kept for evaluation")
        return self.coco_dataset

    def coco(self) -> Any:
        """A pycocotools COCO with one annotation per ground-truth segment (things and stuff, what the model
        is trained to detect): its RLE mask from the PNG, the JSON's bbox, area and iscrowd (box and mask AP)."""
        from pycocotools.coco import COCO

        gt = self.panoptic_gt()
        annotations = []
        for ann in gt["annotations"]:
            ids = read_id_png(self.png_dir / ann["file_name"])  # [H, W]
            for seg in ann["segments_info"]:
                mask = ids == seg["id"]  # [H, W]
                ys, xs = np.nonzero(mask)
                bbox = seg.get("bbox") or [int(xs.min()), int(ys.min()), int(xs.ptp()) + 1, int(ys.ptp()) + 1]
                entry = coco_mask_results(ann["image_id"], mask[None], [1.0], [seg["category_id"]])[0]
                annotations.append({"id": len(annotations) + 1, "image_id": ann["image_id"],
                                    "category_id": seg["category_id"], "segmentation": entry["segmentation"],
                                    "bbox": [float(v) for v in bbox], "area": float(seg.get("area", mask.sum())),
                                    "iscrowd": int(seg.get("iscrowd", 0))})
        coco = COCO()
        coco.dataset = {"images": gt["images"], "annotations": annotations, "categories": gt["categories"]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


@dataclass(frozen=True)
class _PngProbe:
    width: int
    height: int
    pixels: dict[int, int] | None  # segment id -> pixel count (None when only the header was read)


def _categories(data: dict[str, Any], ann_file: Path) -> list[dict[str, Any]]:
    """The well-formed categories with their `isthing` flag; a panoptic file must have some."""
    names = category_names(data)
    cats = [{"id": c["id"], "name": names[c["id"]], "isthing": int(c["isthing"])}
            for c in data.get("categories", [])
            if isinstance(c, dict) and c.get("id") in names and c.get("isthing") in (0, 1)]
    if not cats:
        raise DatasetError(f"{ann_file}: no 'categories' with an integer id and isthing 0 or 1; a COCO "
                           "panoptic file lists every thing and stuff category")
    return cats


def _segment_problem(seg: Any) -> str | None:
    """Why an entry of segments_info cannot be used, or None."""
    if not isinstance(seg, dict):
        return f"entry is a {type(seg).__name__}, not an object"
    if not is_int(seg.get("id")) or not 1 <= seg["id"] <= MAX_SEGMENT_ID:
        return f"id {seg.get('id')!r} is not an integer in [1, {MAX_SEGMENT_ID}]"
    if not is_int(seg.get("category_id")):
        return f"category_id {seg.get('category_id')!r} is not an integer"
    if seg.get("iscrowd", 0) not in (0, 1):
        return f"iscrowd {seg['iscrowd']!r} is not 0 or 1"
    if "area" in seg and not is_number(seg["area"]):
        return f"area {seg['area']!r} is not a finite number"
    return None


def _annotation_problem(ann: Any) -> str | None:
    """Why a panoptic annotation entry cannot be used, or None."""
    if not isinstance(ann, dict):
        return f"entry is a {type(ann).__name__}, not an object"
    if not is_int(ann.get("image_id")):
        return f"image_id {ann.get('image_id')!r} is not an integer"
    name = ann.get("file_name")
    if not isinstance(name, str) or not name or "\x00" in name or not is_relative_file(name):
        return f"file_name {name!r} is not a file name inside the PNG folder"
    if not isinstance(ann.get("segments_info"), list):
        return "no 'segments_info' list"
    return None


def _check_segments(report: PanopticReport, ann: dict[str, Any]) -> list[dict[str, Any]]:
    """The usable segments of one annotation; out-of-range categories are fatal, the rest counted."""
    known = {c["id"] for c in report.categories}
    segments, seen = [], set()
    for seg in ann["segments_info"]:
        where = f"{ann['file_name']}: segment {seg.get('id') if isinstance(seg, dict) else seg!r}"
        problem = _segment_problem(seg)
        if problem is None and seg["id"] in seen:
            problem = "id listed twice"
        if problem is not None:
            report.add("segment_malformed", f"{where}: {problem}")
        elif seg["category_id"] not in known:
            report.add("segment_unknown_category", f"{where}: category_id {seg['category_id']}")
        elif category_in_range(report, seg["category_id"], where):
            segments.append(seg)
            seen.add(seg["id"])
    return segments


def _check_annotations(report: PanopticReport, data: dict[str, Any],
                       images: dict[int, Any]) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """(PNG file name, usable segments) by image id."""
    by_image: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    for ann in data["annotations"]:
        problem = _annotation_problem(ann)
        if problem is None and ann["image_id"] in by_image:
            problem = f"a second annotation of image {ann['image_id']}"
        if problem is not None:
            report.add("panoptic_malformed", f"{ann.get('file_name') if isinstance(ann, dict) else ann!r}: "
                       f"{problem}")
        elif ann["image_id"] not in images:
            report.add("annotation_unknown_image", f"{ann['file_name']} -> image {ann['image_id']}")
        else:
            by_image[ann["image_id"]] = (ann["file_name"], _check_segments(report, ann))
    return by_image


def _probe_png(path: Path, decode: bool) -> _PngProbe:
    """Size and per-id pixel counts of a panoptic PNG (only its size without `decode`)."""
    if not decode:
        return _PngProbe(*id_png_size(path), None)
    ids = read_id_png(path)  # [H, W]
    values, counts = np.unique(ids, return_counts=True)
    return _PngProbe(ids.shape[1], ids.shape[0], dict(zip(values.tolist(), counts.tolist())))


def _add_record(report: PanopticReport, entry: dict[str, Any], probe: ImageProbe, png_name: str,
                segments: list[dict[str, Any]], png: _PngProbe | str) -> list[dict[str, Any]] | None:
    """Check one image's PNG against its image and segments; store its record. None: image skipped."""
    width, height, apply_exif = decide_size(report, entry, probe)
    path = report.png_dir / png_name
    if isinstance(png, str):
        report.add("png_missing" if png == "missing" else "png_unreadable", str(path) if png == "missing" else png)
        return None
    if (png.width, png.height) != (width, height):
        report.add("png_size_mismatch", f"{path}: {png.width}x{png.height}, image {entry['file_name']} "
                   f"{width}x{height}")
        return None
    if png.pixels is not None:
        listed = {s["id"] for s in segments}
        for sid, count in png.pixels.items():
            if sid != VOID and sid not in listed:
                report.add("segment_not_in_json", f"{path}: id {sid} ({count} pixels)")
        for s in segments:
            if s["id"] not in png.pixels:
                report.add("segment_not_in_png", f"{path}: id {s['id']}")
        segments = [s for s in segments if s["id"] in png.pixels]
    target = {
        "segment_ids": np.array([s["id"] for s in segments], dtype=np.int64),
        "labels": np.array([s["category_id"] for s in segments], dtype=np.int64),
        "iscrowd": np.array([s.get("iscrowd", 0) for s in segments], dtype=np.int64),
        # the JSON's area, as the official target; NaN: counted from the mask when loaded
        "area": np.array([s.get("area", np.nan) for s in segments], dtype=np.float32),
    }
    store_record(report, entry, PanopticRecord(report.images_dir / entry["file_name"], width, height, apply_exif,
                                               target, png=path))
    return segments


def _add_records(report: PanopticReport, entries: dict[int, dict[str, Any]],
                 by_image: dict[int, tuple[str, list[dict[str, Any]]]], decoded: dict[int, ImageProbe],
                 workers: int | None, decode: bool) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """Read the decoded images' PNGs; store the records of the usable ones. Returns their (PNG, kept segments)."""
    for image_id in decoded:
        if image_id not in by_image:
            report.add("panoptic_unannotated", entries[image_id]["file_name"])
    usable = [i for i in decoded if i in by_image]
    pngs = probe_files(_probe_png, {i: report.png_dir / by_image[i][0] for i in usable}, workers, decode)
    kept = {}
    for image_id in usable:
        segments = _add_record(report, entries[image_id], decoded[image_id], *by_image[image_id], pngs[image_id])
        if segments is not None:
            kept[image_id] = (by_image[image_id][0], segments)
    return kept


def scan_panoptic(images_dir: str | Path, ann_file: str | Path, png_dir: str | Path,
                  num_classes: int | None = None, workers: int | None = None, keep_gt: bool = True,
                  decode: bool = True) -> PanopticReport:
    """Check an image folder + COCO panoptic JSON + PNG folder; return what is usable and what was wrong.

    Args:
        num_classes: labels must lie in [0, num_classes); None: max category id + 1 (the official
            COCO panoptic models use 250).
        keep_gt: keep the cleaned panoptic JSON for `report.panoptic_gt()` (evaluation).
        decode: decode every image and PNG, checking the PNG's ids against segments_info. False reads
            headers only (sizes still checked); segments absent from a PNG are then dropped when loaded.

    Skipped with a count (one warning from `report.warn()`): an image without annotation, a missing or
    unreadable PNG, a PNG whose size differs from its image. Dropped with a count: a segment with an
    unknown category, a segment of segments_info absent from the PNG; counted: PNG ids absent from
    segments_info (their pixels stay unlabelled).

    Raises:
        DatasetError: missing folders or file, malformed JSON, no categories, a category id >=
            num_classes, duplicate image ids, or no usable image; the message names the file.
    """
    images_dir, ann_file, png_dir = Path(images_dir), Path(ann_file), Path(png_dir)
    check_folders({images_dir: "image", png_dir: "panoptic PNG"})
    data = read_json(ann_file)
    report = PanopticReport(images_dir, ann_file, num_images_listed=len(data["images"]),
                            num_annotations_listed=len(data["annotations"]), png_dir=png_dir,
                            categories=_categories(data, ann_file))
    names = {c["id"]: c["name"] for c in report.categories}
    entries, kept = run_scan(report, data, num_classes, names, _check_annotations,
                             functools.partial(_add_records, workers=workers, decode=decode), workers, decode,
                             where=f" with a PNG in {png_dir}")
    if keep_gt:
        report.coco_dataset = {
            "images": [entries[i] for i in report.image_ids],
            "annotations": [{"image_id": i, "file_name": kept[i][0], "segments_info": kept[i][1]}
                            for i in report.image_ids],
            "categories": report.categories}
    return report


class CocoPanoptic(CocoDetection):
    """Images and panoptic targets of the usable images of a scanned COCO panoptic dataset.

    `dataset[i]` is `(image, target)` as `CocoDetection`'s, with "masks" [N, H, W] bool (one per
    segment, transformed with the image) and "boxes" computed from the masks before the transforms.
    `categories` lists `{"id", "name", "isthing"}`.
    """

    def __init__(self, report: PanopticReport, transforms: Callable[..., Any] | None = None):
        super().__init__(report, transforms)
        self.categories = report.categories

    def _target(self, rec: ImageRecord) -> Target:
        assert isinstance(rec, PanopticRecord)
        ids = read_id_png(rec.png)  # [H, W]
        if ids.shape != (rec.height, rec.width):
            raise DatasetError(f"{rec.png}: PNG is {ids.shape[1]}x{ids.shape[0]} now but was "
                               f"{rec.width}x{rec.height} when the dataset was scanned (file changed?)")
        t = rec.target
        masks = ids[None] == t["segment_ids"][:, None, None]  # [N, H, W]
        keep = masks.any(axis=(1, 2))  # all True unless scanned with decode=False
        masks_t = torch.from_numpy(masks[keep])
        area = torch.from_numpy(t["area"][keep])
        area = torch.where(area.isnan(), masks_t.sum((1, 2)).float(), area)
        return {
            "boxes": tv_tensors.BoundingBoxes(masks_to_boxes(masks_t), format="XYXY",
                                              canvas_size=(rec.height, rec.width)),  # [N, 4] pixels
            "masks": tv_tensors.Mask(masks_t),
            "labels": torch.from_numpy(t["labels"][keep]),
            "area": area,
            "iscrowd": torch.from_numpy(t["iscrowd"][keep]),
        }


def build_panoptic_dataset(images_dir: str | Path, ann_file: str | Path, png_dir: str | Path, train: bool,
                           transforms: Callable[..., Any] | None = None, num_classes: int | None = None,
                           decode: bool = True) -> CocoPanoptic:
    """Scan a panoptic dataset (one warning if anything was skipped) and wrap it for training or eval.

    A training dataset keeps no ground truth for evaluation (`report.panoptic_gt()`), to save memory.

    Raises:
        DatasetError: the dataset cannot be used; the message names the file and the problem.
    """
    report = scan_panoptic(images_dir, ann_file, png_dir, num_classes=num_classes, keep_gt=not train,
                           decode=decode)
    report.warn()
    return CocoPanoptic(report, transforms if transforms is not None else make_transforms(train))


def coco_panoptic_paths(coco_path: str | Path, coco_panoptic_path: str | Path) -> dict[str, Path]:
    """The COCO 2017 panoptic layout, as the official `--coco_path` / `--coco_panoptic_path`.

    Returns {"train_images", "train_annotations", "train_panoptic", "val_images", "val_annotations",
    "val_panoptic"}: images in `coco_path`/{train,val}2017, the JSON in `coco_panoptic_path`/annotations/
    panoptic_{train,val}2017.json and the PNGs in `coco_panoptic_path`/panoptic_{train,val}2017.

    Raises:
        DatasetError: a folder or one of the six parts is missing (all missing parts named).
    """
    images, panoptic = Path(coco_path), Path(coco_panoptic_path)
    for root, flag in ((images, "--coco_path"), (panoptic, "--coco_panoptic_path")):
        if not root.is_dir():
            raise DatasetError(f"{flag} {root}: folder not found")
    paths = {}
    for split in ("train", "val"):
        paths[f"{split}_images"] = images / f"{split}2017"
        paths[f"{split}_annotations"] = panoptic / "annotations" / f"panoptic_{split}2017.json"
        paths[f"{split}_panoptic"] = panoptic / f"panoptic_{split}2017"
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise DatasetError(f"not a COCO 2017 panoptic layout; missing: {', '.join(missing)} (expected "
                           "--coco_path with {train,val}2017/ and --coco_panoptic_path with annotations/"
                           "panoptic_{train,val}2017.json and panoptic_{train,val}2017/)")
    return paths
