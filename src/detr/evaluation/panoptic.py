"""Panoptic quality (PQ = SQ x RQ, Kirillov et al. 2019) of COCO panoptic predictions, as panopticapi's
`pq_compute` defines it, over several processes.

Per image, a predicted and a ground-truth segment of the same category match when their IoU > 0.5
(segments do not overlap, so a match is unique). The union leaves out the prediction's pixels on
VOID (id 0) ground truth. Crowd ground-truth segments match nothing and are not missed; an unmatched
prediction is not a false positive when more than half of it lies on VOID plus the crowd region of
its own category. Per category: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP,
RQ = TP / (TP + FP/2 + FN/2); "All", "Things" and "Stuff" average the categories that occur
(TP + FP + FN > 0), `n` of them.

Like panopticapi, the ground-truth area is the JSON's `area` (the pixel count when absent), the
predicted area is counted in its PNG, and a prediction whose PNG and segments_info disagree, or with
an unknown category, is refused. Unlike it, an average over no category is 0 (not a ZeroDivisionError).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import DatasetError
from ..data.masks import read_id_png

log = logging.getLogger("detr.evaluation.panoptic")

OFFSET = 256**3  # gt_id * OFFSET + pred_id packs a pair of segment ids into one integer
VOID = 0
Stats = dict[int, list[float]]  # category id -> [sum of IoU, TP, FP, FN]


def image_pq_stats(gt_ids: np.ndarray, gt_segments: list[dict[str, Any]], pred_ids: np.ndarray,
                   pred_segments: list[dict[str, Any]]) -> Stats:
    """[sum IoU, TP, FP, FN] per category of one image, from [H, W] id maps and their segments_info.

    Assumes consistent predictions (every PNG id but VOID listed and vice versa; see `check_prediction`).
    """
    gt = {s["id"]: s for s in gt_segments}
    pred = {s["id"]: s for s in pred_segments}
    pairs, counts = np.unique(gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64), return_counts=True)
    overlap = {(p // OFFSET, p % OFFSET): c for p, c in zip(pairs.tolist(), counts.tolist())}  # (gt, pred) -> pixels
    pred_area: dict[int, int] = {}
    gt_pixels: dict[int, int] = {}
    for (g, p), c in overlap.items():
        pred_area[p] = pred_area.get(p, 0) + c
        gt_pixels[g] = gt_pixels.get(g, 0) + c
    stats: Stats = {}

    def add(cat: int, iou: float = 0.0, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        s = stats.setdefault(cat, [0.0, 0, 0, 0])
        s[0] += iou
        s[1] += tp
        s[2] += fp
        s[3] += fn

    gt_matched, pred_matched = set(), set()
    for (g, p), inter in overlap.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
            continue
        if gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        gt_area = gt[g].get("area", gt_pixels.get(g, 0))
        union = pred_area[p] + gt_area - inter - overlap.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            add(gt[g]["category_id"], iou=iou, tp=1)
            gt_matched.add(g)
            pred_matched.add(p)
    crowd_of: dict[int, int] = {}  # category -> its crowd segment (the last listed, as panopticapi)
    for g, seg in gt.items():
        if seg.get("iscrowd", 0) == 1:
            crowd_of[seg["category_id"]] = g
        elif g not in gt_matched:
            add(seg["category_id"], fn=1)
    for p, seg in pred.items():
        if p in pred_matched or p not in pred_area:
            continue
        ignored = overlap.get((VOID, p), 0)
        if seg["category_id"] in crowd_of:
            ignored += overlap.get((crowd_of[seg["category_id"]], p), 0)
        if ignored / pred_area[p] <= 0.5:
            add(seg["category_id"], fp=1)
    return stats


def check_prediction(pred_ids: np.ndarray, pred_segments: list[dict[str, Any]], categories: set[int],
                     where: str) -> None:
    """Refuse a prediction whose PNG and segments_info disagree or that names an unknown category.

    Raises:
        DatasetError: naming `where` (the PNG) and the offending segment ids or category.
    """
    listed = {s["id"] for s in pred_segments}
    present = set(np.unique(pred_ids).tolist())
    if VOID not in listed:  # as panopticapi: a listed id 0 is a segment (the official postprocess's first), else VOID
        present.discard(VOID)
    if present - listed:
        raise DatasetError(f"{where}: segment ids {sorted(present - listed)} are in the PNG but not in its "
                           "segments_info")
    if listed - present:
        raise DatasetError(f"{where}: segment ids {sorted(listed - present)} are in segments_info but not in "
                           "the PNG")
    for s in pred_segments:
        if s["category_id"] not in categories:
            raise DatasetError(f"{where}: segment {s['id']} has category_id {s['category_id']}, not a category "
                               "of the ground truth")


def _chunk_stats(pairs: list[tuple[dict[str, Any], dict[str, Any]]], gt_folder: str, pred_folder: str,
                 categories: set[int]) -> Stats:
    """Stats summed over some images (runs in a worker process)."""
    total: Stats = {}
    for gt_ann, pred_ann in pairs:
        gt_png, pred_png = Path(gt_folder) / gt_ann["file_name"], Path(pred_folder) / pred_ann["file_name"]
        gt_ids, pred_ids = read_id_png(gt_png), read_id_png(pred_png)  # [H, W] each
        if gt_ids.shape != pred_ids.shape:
            raise DatasetError(f"{pred_png}: {pred_ids.shape[1]}x{pred_ids.shape[0]}, but the ground truth "
                               f"{gt_png} is {gt_ids.shape[1]}x{gt_ids.shape[0]}")
        check_prediction(pred_ids, pred_ann["segments_info"], categories, str(pred_png))
        _merge(total, image_pq_stats(gt_ids, gt_ann["segments_info"], pred_ids, pred_ann["segments_info"]))
    return total


def _merge(total: Stats, part: Stats) -> None:
    for cat, s in part.items():
        t = total.setdefault(cat, [0.0, 0, 0, 0])
        for i in range(4):
            t[i] += s[i]


def pq_average(stats: Stats, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """panopticapi's result layout from per-category stats: All / Things / Stuff averages and per_class."""
    per_class: dict[int, dict[str, float]] = {}
    for cat in categories:
        iou, tp, fp, fn = stats.get(cat["id"], [0.0, 0, 0, 0])
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_class[cat["id"]] = {"pq": iou / denominator if denominator else 0.0,
                                "sq": iou / tp if tp else 0.0,
                                "rq": tp / denominator if denominator else 0.0}
    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", 1), ("Stuff", 0)):
        ids = [c["id"] for c in categories if (isthing is None or c.get("isthing") == isthing)
               and sum(stats.get(c["id"], [0.0, 0, 0, 0])[1:]) > 0]
        n = len(ids)
        results[name] = {k: sum(per_class[i][k] for i in ids) / n if n else 0.0 for k in ("pq", "sq", "rq")}
        results[name]["n"] = n
    results["per_class"] = per_class
    return results


def _load(source: str | Path | dict[str, Any], what: str) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{source}: cannot read the {what} JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{source}: the {what} JSON has no 'annotations' list")
    return data


def _pairs(gt: dict[str, Any], pred: dict[str, Any], pred_json: Any) -> list[tuple[dict, dict]]:
    """(GT annotation, prediction) per GT image; every GT image needs a prediction."""
    name = pred_json if not isinstance(pred_json, dict) else "predictions"
    for a in pred["annotations"]:
        if not (isinstance(a, dict) and "image_id" in a and isinstance(a.get("file_name"), str)
                and isinstance(a.get("segments_info"), list)):
            raise DatasetError(f"{name}: an annotation without image_id, file_name and segments_info: {a!r:.80}")
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    missing = [a["image_id"] for a in gt["annotations"] if a["image_id"] not in by_image]
    if missing:
        raise DatasetError(f"{name}: no prediction for "
                           f"{len(missing)} ground-truth image(s), e.g. image_id {missing[:5]}")
    return [(a, by_image[a["image_id"]]) for a in gt["annotations"]]


def panoptic_quality(gt_json: str | Path | dict[str, Any], gt_folder: str | Path,
                     pred_json: str | Path | dict[str, Any], pred_folder: str | Path,
                     workers: int | None = None) -> dict[str, Any]:
    """PQ, SQ and RQ of COCO panoptic predictions, as panopticapi's `pq_compute`.

    Args:
        gt_json, pred_json: COCO panoptic JSON files (or their loaded dicts); the categories
            (with `isthing`) come from the ground truth, as the predictions' `annotations`.
        gt_folder, pred_folder: the folders of their PNGs.
        workers: processes over images (default: up to 8, one per CPU); 1 works in this process.

    Returns:
        {"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {"pq", "sq", "rq"}}},
        values in [0, 1].

    Raises:
        DatasetError: unreadable JSON or PNG, a ground-truth image without prediction, a prediction PNG
            of another size than its ground truth or that disagrees with its segments_info, or an
            unknown category; the message names the file.
    """
    gt, pred = _load(gt_json, "ground-truth"), _load(pred_json, "prediction")
    categories = [c for c in gt.get("categories", []) if isinstance(c, dict) and "id" in c]
    if not categories:
        raise DatasetError(f"{gt_json if not isinstance(gt_json, dict) else 'ground truth'}: no 'categories'")
    for folder in (gt_folder, pred_folder):
        if not Path(folder).is_dir():
            raise DatasetError(f"{folder}: panoptic PNG folder not found")
    pairs = _pairs(gt, pred, pred_json)
    cat_ids = {c["id"] for c in categories}
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), len(pairs)))
    chunks = [list(c) for c in np.array_split(np.arange(len(pairs)), workers) if len(c)]
    args = (str(gt_folder), str(pred_folder), cat_ids)
    if workers == 1:
        parts = [_chunk_stats(pairs, *args)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_chunk_stats, [pairs[i] for i in chunk], *args) for chunk in chunks]
            parts = [f.result() for f in futures]
    stats: Stats = {}
    for part in parts:
        _merge(stats, part)
    results = pq_average(stats, categories)
    log.info("panoptic quality of %d images:\n%s", len(pairs), pq_table(results))
    return results


def pq_table(results: dict[str, Any]) -> str:
    """The All / Things / Stuff rows of `panoptic_quality`'s results as a small table (in %)."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}  {'N':>4s}", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f}  {r['n']:4d}")
    return "\n".join(lines)
