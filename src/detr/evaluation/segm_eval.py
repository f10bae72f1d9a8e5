"""Evaluation of a segmentation model's masks: mask AP (COCOeval segm) and panoptic quality (PQ / SQ / RQ).

`MaskEvaluator` collects, batch by batch, the instance masks of `postprocess_segmentation` as COCO RLE results
and the panoptic predictions of `postprocess_panoptic`; `summarize` gathers them from every process and scores
them on the main one, as the official `engine.evaluate` does with its CocoEvaluator("segm") and PanopticEvaluator.

Segment ids: the official postprocess numbers the segments of an image from 0, and panopticapi counts a listed
id 0 as a segment (VOID only when unlisted). The predictions written here shift every id by 1, so that 0 is
VOID in every file we write, whatever tool reads them (our own scanner refuses id 0 as a segment); PQ does not
depend on the ids' values, and `panoptic_quality` also counts a listed id 0 as panopticapi does.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..checkpoint import write_bytes, write_json
from ..data.masks import coco_mask_results, encode_id_png
from ..data.panoptic import PanopticReport
from ..distributed import is_distributed, is_main_process, world_size
from ..postprocessing.masks import PANOPTIC_THRESHOLDS, postprocess_panoptic, postprocess_segmentation
from .coco_eval import STAT_NAMES, coco_mask_eval
from .panoptic import panoptic_quality, pq_table

log = logging.getLogger(__name__)

PanopticPrediction = tuple[dict[str, Any], bytes]  # (annotation {image_id, file_name, segments_info}, PNG bytes)


def shift_segments(segment_ids: np.ndarray, segments_info: list[dict[str, Any]],
                   categories: set[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The official 0-based segments of one image renumbered from 1 (0: VOID), keeping only segments of a known
    category with pixels; the pixels of the others become VOID. segment_ids [H, W] -> [H, W] int64."""
    out = np.zeros(segment_ids.shape, dtype=np.int64)
    kept = []
    for seg in segments_info:
        if seg["category_id"] not in categories or seg["area"] <= 0:
            continue
        out[segment_ids == seg["id"]] = seg["id"] + 1
        kept.append({**seg, "id": seg["id"] + 1, "isthing": int(seg["isthing"])})
    return out, kept


class MaskEvaluator:
    """Collects a segmentation model's masks over an evaluation; `summarize` scores them.

    Args:
        class_loss: the model's class head (how its scores are read).
        panoptic: the validation set's panoptic report (ground truth for PQ), or None: mask AP only.
        out_dir: where the panoptic predictions (PNGs + JSON) are kept; None: a temporary folder.
        threshold: least class score of a query kept in the panoptic output (default: PANOPTIC_THRESHOLDS).
    """

    def __init__(self, class_loss: str, panoptic: PanopticReport | None = None, out_dir: Path | None = None,
                 threshold: float | None = None):
        self.class_loss = class_loss
        self.threshold = PANOPTIC_THRESHOLDS[class_loss] if threshold is None else threshold
        self.panoptic = panoptic
        self.out_dir = out_dir
        self.mask_results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.predictions: list[PanopticPrediction] = []
        cats = panoptic.categories if panoptic is not None else []
        self.categories = {c["id"] for c in cats}
        self._thing = {c["id"]: bool(c["isthing"]) for c in cats}
        self.dropped = 0  # predicted segments of a category the ground truth does not have

    def update(self, outputs: dict[str, Any], targets: list[dict[str, Any]], orig_sizes: Tensor) -> None:
        """One batch: outputs with "pred_masks" [B, Q, h, w]; targets with "size" (fed) and "image_id"."""
        processed = torch.stack([torch.as_tensor(t["size"]) for t in targets])  # [B, 2] (h, w) before padding
        ids = [int(t["image_id"]) for t in targets]
        self.image_ids += ids
        for res, image_id in zip(postprocess_segmentation(outputs, orig_sizes, processed, self.class_loss), ids):
            self.mask_results += coco_mask_results(image_id, res["masks"], res["scores"], res["labels"])
        if self.panoptic is None:
            return
        # crop_padding: each image's own part of the padded batch's masks (the official code stretches all of it)
        results = postprocess_panoptic(outputs, processed, orig_sizes, lambda c: self._thing.get(c, False),
                                       threshold=self.threshold, class_loss=self.class_loss, crop_padding=True)
        for res, image_id in zip(results, ids):
            ids_map, segments = shift_segments(res["segment_ids"].numpy(), res["segments_info"], self.categories)
            self.dropped += len(res["segments_info"]) - len(segments)
            annotation = {"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segments}
            self.predictions.append((annotation, encode_id_png(ids_map)))

    def summarize(self, coco_gt: Any, image_ids: list[int]) -> dict[str, Any]:
        """Mask AP ("coco_eval_masks": the 12 COCOeval numbers, "mask_AP") and, for panoptic data, PQ ("PQ_all",
        "PQ_th", "PQ_st": {"pq", "sq", "rq", "n"} as the official log, "PQ": All's pq), on every process."""
        results, predictions, dropped = _gather((self.image_ids, self.mask_results, self.predictions, self.dropped))
        stats: dict[str, Any] = {}
        if is_main_process():
            masks, _ = coco_mask_eval(coco_gt, results, image_ids)
            stats.update(coco_eval_masks=masks, mask_AP=masks[STAT_NAMES.index("AP")])
            if self.panoptic is not None:
                stats.update(self._panoptic_quality(predictions, dropped))
        if is_distributed():
            box = [stats]
            dist.broadcast_object_list(box, src=0)
            stats = box[0]
        return stats

    def _panoptic_quality(self, predictions: list[PanopticPrediction], dropped: int) -> dict[str, Any]:
        assert self.panoptic is not None
        if dropped:
            log.warning("%d predicted segment(s) of a category the ground truth does not list were left VOID", dropped)
        with tempfile.TemporaryDirectory() as tmp:
            folder = (self.out_dir / "panoptic_eval") if self.out_dir else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            for annotation, png in predictions:
                write_bytes(folder / annotation["file_name"], png)
            pred = {"annotations": [a for a, _ in predictions], "categories": self.panoptic.categories}
            if self.out_dir:
                write_json(self.out_dir / "panoptic_val.json", pred)
            pq = panoptic_quality(self.panoptic.panoptic_gt(), self.panoptic.png_dir, pred, folder,
                                  workers=1 if len(predictions) < 200 else None)
        return {"PQ_all": pq["All"], "PQ_th": pq["Things"], "PQ_st": pq["Stuff"], "PQ": pq["All"]["pq"],
                "panoptic_summary": pq_table(pq)}


def _gather(part: tuple[list[int], list, list, int]) -> tuple[list, list, int]:
    """Every process's (image ids, mask results, panoptic predictions, dropped count) merged, each image from the
    first process that saw it (the distributed sampler repeats a few images so that every process gets as many)."""
    parts: list[Any] = [None] * world_size() if is_distributed() else [part]
    if is_distributed():
        dist.all_gather_object(parts, part)
    results, predictions, seen = [], [], set()
    for ids, res, preds, _ in parts:
        new = set(ids) - seen
        results += [r for r in res if r["image_id"] in new]
        predictions += [p for p in preds if p[0]["image_id"] in new]
        seen |= new
    return results, predictions, sum(p[3] for p in parts)
