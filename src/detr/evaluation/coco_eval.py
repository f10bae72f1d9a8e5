"""COCO bbox and mask (segm) evaluation with pycocotools, and detections in the COCO results format.

Detections are lists of dicts `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`
in original-image pixels; the category id is the model's label (DETR predicts category ids).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch.distributed as dist
from torch import Tensor

from ..checkpoint import write_json
from ..data.coco import coco_results
from ..distributed import is_distributed, world_size

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


def to_coco_detections(results: Sequence[dict[str, Tensor]], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Postprocessed results (xyxy pixel boxes) of several images -> COCO results entries."""
    return [d for res, image_id in zip(results, image_ids)
            for d in coco_results(image_id, res["boxes"], res["scores"], res["labels"])]


def gather_detections(detections: list[dict[str, Any]], image_ids: Iterable[int]) -> tuple[list, list[int]]:
    """Collect every process's detections and evaluated image ids (each image once)."""
    image_ids = list(image_ids)
    if is_distributed():
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, (detections, image_ids))
    else:
        parts = [(detections, image_ids)]
    # A distributed sampler repeats a few images to give every process the same number:
    # keep each image's detections from the first process that saw it.
    seen: set[int] = set()
    all_dets: list[dict[str, Any]] = []
    for dets, ids in parts:
        new = set(ids) - seen
        all_dets += [d for d in dets if d["image_id"] in new]
        seen |= new
    return all_dets, sorted(seen)


def coco_bbox_eval(coco_gt: Any, detections: list[dict[str, Any]], image_ids: Sequence[int]) -> tuple[list[float], str]:
    """Run COCOeval (bbox) on `image_ids`; returns the 12 summary numbers and the printed summary."""
    return _coco_eval(coco_gt, detections, image_ids, "bbox")


def bbox_cocoeval(coco_gt: Any, detections: list[dict[str, Any]], image_ids: Sequence[int]) -> tuple[Any, str]:
    """The summarized pycocotools COCOeval (bbox) of `image_ids` and its printed summary; its
    `eval["precision"]` [T, R, K, A, M] gives the per-class numbers (`detr.evaluation.diagnostics`)."""
    return _run_cocoeval(coco_gt, detections, image_ids, "bbox")


def coco_mask_eval(coco_gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int]) -> tuple[list[float], str]:
    """Mask AP: COCOeval (segm) on `image_ids`; returns the 12 summary numbers and the printed summary.

    `coco_gt` is a pycocotools COCO whose annotations have segmentations (polygons or RLE);
    `results` are `{"image_id", "category_id", "segmentation": RLE, "score"}` (`coco_mask_results`).
    """
    return _coco_eval(coco_gt, results, image_ids, "segm")


def _coco_eval(coco_gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int],
               iou_type: str) -> tuple[list[float], str]:
    coco_eval, summary = _run_cocoeval(coco_gt, results, image_ids, iou_type)
    return [float(s) for s in coco_eval.stats], summary


def _run_cocoeval(coco_gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int],
                  iou_type: str) -> tuple[Any, str]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.params.imgIds = list(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    summary = "\n".join(line for line in buffer.getvalue().splitlines() if line.lstrip().startswith("Average"))
    return coco_eval, summary


def save_detections(path: str | os.PathLike, detections: list[dict[str, Any]]) -> None:
    """Write detections as a COCO results JSON file (atomically)."""
    write_json(path, detections)
