"""What a dataset scan found: the usable images' records and every problem, counted by kind with examples."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
