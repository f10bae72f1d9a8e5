"""Per-class diagnostics of an evaluation: AP and AP50 per class, precision-recall curves at IoU 0.5 and a
confusion matrix with a background row and column, written next to the metrics (`write_diagnostics`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import write_json

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.5  # of the confusion matrix
CONFUSION_RULE = (
    "detections with score >= score_threshold, taken by decreasing score; each is matched to the still unmatched "
    "ground-truth box (crowd boxes left out) of largest IoU >= iou_threshold, whatever the classes; a matched pair "
    "counts at [gt class, predicted class], an unmatched gt at [gt class, background], an unmatched detection at "
    "[background, predicted class]")


def _index(values: Sequence[float], wanted: float) -> int:
    matches = [i for i, v in enumerate(values) if abs(float(v) - wanted) < 1e-6]
    if not matches:
        raise ValueError(f"COCOeval parameters have no {wanted} in {list(values)}")
    return matches[0]


def _mean_valid(values: np.ndarray) -> float | None:
    """COCOeval's mean over entries > -1 (-1: no ground truth); None when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def per_class_ap(coco_eval: Any) -> list[dict[str, Any]]:
    """Per-class AP (IoU 0.50:0.95) and AP50 of a summarized bbox COCOeval, area "all", 100 detections.

    Returns one record per category of the evaluation: {"id", "name", "AP", "AP50", "num_gt"}; AP is the
    mean of `eval["precision"]` [T, R, K, A, M] over IoUs and recall points where it is > -1, as
    COCOeval.summarize does for all classes at once; None for a class without ground-truth boxes.
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    area, dets = p.areaRngLbl.index("all"), _index(p.maxDets, 100)
    t50 = _index(p.iouThrs, 0.5)
    gt = coco_eval.cocoGt
    records = []
    for k, cat in enumerate(p.catIds):
        num_gt = len(gt.getAnnIds(imgIds=p.imgIds, catIds=[cat], iscrowd=False))
        ap = _mean_valid(precision[:, :, k, area, dets])  # [T, R]
        ap50 = _mean_valid(precision[t50, :, k, area, dets])  # [R]
        records.append({"id": int(cat), "name": str(gt.cats.get(cat, {}).get("name", cat)),
                        "AP": ap, "AP50": ap50, "num_gt": num_gt})
    return records


def pr_curves(coco_eval: Any, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Precision at COCOeval's recall points, per class, at IoU `iou` (area "all", 100 detections).

    Returns (recall [R], precision [K, R]) in the order of `params.catIds`; a class without
    ground truth has precision -1 throughout.
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    curve = precision[_index(p.iouThrs, iou), :, :, p.areaRngLbl.index("all"), _index(p.maxDets, 100)]  # [R, K]
    return np.asarray(p.recThrs, dtype=float), np.ascontiguousarray(curve.T)


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of COCO boxes a [N, 4] and b [M, 4] (x, y, w, h) -> [N, M]."""
    a, b = a.reshape(-1, 4).astype(float), b.reshape(-1, 4).astype(float)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])  # [N, M, 2]
    inter = np.clip(rb - lt, 0, None).prod(-1)  # [N, M]
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def confusion_matrix(coco_gt: Any, detections: list[dict[str, Any]], image_ids: Sequence[int],
                     cat_ids: Sequence[int], score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """Counts [K + 1, K + 1]: rows the ground-truth class, columns the predicted class, in the order of
    `cat_ids`; the last row and column are the background.

    The rule (`CONFUSION_RULE`), per image: detections with score >= `score_threshold` are taken by decreasing
    score; each is matched to the still unmatched ground-truth box of largest IoU >= `iou_threshold`, whatever
    the two classes (crowd boxes are left out). A matched pair counts at [gt class, predicted class], a
    detection matched to nothing at [background, predicted class], a gt box left unmatched at
    [gt class, background]. Matching by IoU regardless of class is the rule of ultralytics and supervision;
    they visit pairs by IoU rather than detections by score, which differs only where a box overlaps several.
    Detections of a category outside `cat_ids` are left out (COCOeval ignores them too).
    """
    index = {int(c): i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for d in detections:
        if d["score"] >= score_threshold and int(d["category_id"]) in index:
            by_image.setdefault(int(d["image_id"]), []).append(d)
    for image_id in image_ids:
        anns = [a for a in coco_gt.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0) and int(a["category_id"]) in index]
        dets = sorted(by_image.get(int(image_id), []), key=lambda d: -d["score"])
        ious = box_iou_xywh(np.array([d["bbox"] for d in dets]), np.array([a["bbox"] for a in anns]))  # [D, G]
        taken = np.zeros(len(anns), dtype=bool)
        for i, d in enumerate(dets):
            pred = index[int(d["category_id"])]
            candidates = np.where(taken, -1.0, ious[i]) if anns else np.zeros(0)
            j = int(np.argmax(candidates)) if candidates.size else -1
            if j >= 0 and candidates[j] >= iou_threshold:
                taken[j] = True
                matrix[index[int(anns[j]["category_id"])], pred] += 1
            else:
                matrix[bg, pred] += 1
        for j in np.flatnonzero(~taken):
            matrix[index[int(anns[j]["category_id"])], bg] += 1
    return matrix


def class_table(records: list[dict[str, Any]]) -> str:
    """A readable table of `per_class_ap` records."""
    width = max([len(r["name"]) for r in records] + [5])
    lines = [f"{'id':>6}  {'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'gt boxes':>8}"]
    for r in records:
        ap, ap50 = ("-" if v is None else f"{v:.3f}" for v in (r["AP"], r["AP50"]))
        lines.append(f"{r['id']:>6}  {r['name']:<{width}}  {ap:>6}  {ap50:>6}  {r['num_gt']:>8}")
    return "\n".join(lines)


def write_diagnostics(out_dir: Path | None, coco_eval: Any, detections: list[dict[str, Any]],
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[dict[str, Any]]:
    """Per-class AP of one bbox evaluation, logged as a table; with `out_dir` (created) also written as
    per_class.json, pr_curves.png, confusion_matrix.json and confusion_matrix.png. A picture that fails
    is a warning. Returns the `per_class_ap` records."""
    records = per_class_ap(coco_eval)
    log.info("per-class AP:\n%s", class_table(records))
    if out_dir is None:
        return records
    from .plots import plot_confusion_matrix, plot_pr_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "per_class.json", records, indent=1)
    cat_ids = [r["id"] for r in records]
    names = [r["name"] for r in records]
    matrix = confusion_matrix(coco_eval.cocoGt, detections, coco_eval.params.imgIds, cat_ids, score_threshold)
    write_json(out_dir / "confusion_matrix.json", {
        "iou_threshold": 0.5, "score_threshold": score_threshold, "rule": CONFUSION_RULE,
        "rows": "ground-truth class, then background (detections matched to no ground truth)",
        "columns": "predicted class, then background (ground truth matched by no detection)",
        "classes": [{"id": i, "name": n} for i, n in zip(cat_ids, names)] + [{"id": None, "name": "background"}],
        "matrix": matrix.tolist()}, indent=1)
    recall, precision = pr_curves(coco_eval)
    for name, draw in (("pr_curves.png", lambda p: plot_pr_curves(recall, precision, names, records, p)),
                       ("confusion_matrix.png", lambda p: plot_confusion_matrix(matrix, names, score_threshold, p))):
        try:
            draw(out_dir / name)
        except Exception as e:  # a picture is never worth stopping an evaluation or a training run
            log.warning("could not draw %s: %s: %s", out_dir / name, type(e).__name__, e)
    return records
