"""Turn the segmentation model's outputs into instance masks and COCO panoptic predictions.

Both follow the official `PostProcessSegm` and `PostProcessPanoptic` (models/segmentation.py) step by step, so
that the masks, segment ids, classes and areas are the official ones on the same outputs.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..config import uses_sigmoid
from ..panoptic_ids import id_to_rgb, rgb_to_id
from ..registry import coco_panoptic_is_thing
from .boxes import postprocess

Sizes = Tensor | Sequence[Sequence[int]]
# Least class score of a query kept in the panoptic output, per class head: the official 0.85 for the softmax head.
# A sigmoid head has no "no object" column and scores lower; 0.3 is the best of the thresholds swept on the
# panoptic demo's focal head (BENCHMARKS.md, "Why the presets are what they are"); varifocal and mal take the
# same value untested.
PANOPTIC_THRESHOLDS = {"softmax": 0.85, "focal": 0.3, "varifocal": 0.3, "mal": 0.3}


@torch.no_grad()
def postprocess_segmentation(outputs: dict[str, Any], target_sizes: Sizes, processed_sizes: Sizes | None = None,
                             class_loss: str = "softmax", threshold: float = 0.5,
                             top_k: int = 100, min_score: float = 0.0) -> list[dict[str, Tensor]]:
    """`detr.postprocess`'s detections of every image with a binary mask each, at the original image size.

    The mask logits [H/4, W/4] of the padded batch are upsampled (bilinear) to the largest processed size,
    thresholded (sigmoid > `threshold`), cropped to each image's processed size and resized (nearest) to its
    original size, as the official PostProcessSegm.

    Args:
        outputs: the segmentation model's output dict ("pred_logits", "pred_boxes", "pred_masks" [B, Q, h, w]).
        target_sizes: [B, 2] (height, width) of each original image; boxes and masks are at that size.
        processed_sizes: [B, 2] (height, width) of each image as given to the model, before padding; None: the
            target sizes (the images were given at their original sizes).
        class_loss, top_k: as `detr.postprocess`.
        threshold: mask probability above which a pixel belongs to the mask.
        min_score: detections scoring below it are dropped before their masks are made (a mask per query at
            the original size can take gigabytes for large photos; 0 keeps them all, as the official code).

    Returns:
        One dict per image: `detr.postprocess`'s "scores", "labels", "boxes", "queries" [N] and "masks" [N, H, W]
        bool (H, W: the original size).
    """
    results = postprocess(outputs, target_sizes, class_loss, top_k)
    targets = torch.as_tensor(target_sizes).tolist()
    processed = targets if processed_sizes is None else torch.as_tensor(processed_sizes).tolist()
    max_h, max_w = (max(s[i] for s in processed) for i in (0, 1))
    for result, logits, (ph, pw), (th, tw) in zip(results, outputs["pred_masks"], processed, targets):
        if min_score > 0:
            kept = result["scores"] >= min_score
            result.update({k: v[kept] for k, v in result.items()})
        if len(result["queries"]) == 0:  # (interpolate refuses 0 channels)
            result["masks"] = torch.zeros((0, th, tw), dtype=torch.bool, device=logits.device)
            continue
        logits = logits[result["queries"]]  # [N, h, w], the detections' masks only
        masks = F.interpolate(logits[None], size=(max_h, max_w), mode="bilinear", align_corners=False)[0]
        masks = (masks.sigmoid() > threshold)[:, :ph, :pw]  # [N, ph, pw]
        result["masks"] = F.interpolate(masks[:, None].float(), size=(th, tw), mode="nearest")[:, 0] > 0.5
    return results


@torch.no_grad()
def postprocess_panoptic(outputs: dict[str, Any], processed_sizes: Sizes, target_sizes: Sizes | None = None,
                         is_thing: Callable[[int], bool] = coco_panoptic_is_thing, threshold: float | None = None,
                         class_loss: str = "softmax", crop_padding: bool = False) -> list[dict[str, Any]]:
    """The panoptic segmentation of every image in the COCO panoptic format.

    As the official PostProcessPanoptic: queries whose best class is not "no object" with a score above
    `threshold` are kept; each pixel goes to the kept query with the largest mask logit (at the processed size);
    the segments of one stuff class are merged into the first of them; segments of 4 pixels or fewer (at the
    target size) are dropped and the pixels assigned again among the others, until none is that small.

    Args:
        outputs: the segmentation model's output dict ("pred_logits", "pred_masks" [B, Q, h, w]).
        processed_sizes: [B, 2] (height, width) of each image as given to the model, before padding.
        target_sizes: [B, 2] (height, width) the results are resized to (nearest); None: the processed sizes.
        is_thing: whether a category id is a thing (default: COCO panoptic's, ids 1-90); stuff is merged.
        threshold: least class score of a kept query; None: the head's (PANOPTIC_THRESHOLDS, 0.85 for softmax).
        class_loss: the model's class head; the sigmoid heads ("focal", "varifocal") keep queries by their best
            sigmoid score.
        crop_padding: the masks [h, w] cover the padded batch; the official code resizes all of it to each
            image's processed size, which shifts and stretches the masks of every image smaller than the batch's
            largest. True upsamples them to the largest processed size and crops each image's part first (as
            `postprocess_segmentation` and the official PostProcessSegm do); the same result for one image.

    Returns:
        One dict per image: "png_string" (bytes: a PNG whose RGB encodes each pixel's segment id as
        R + 256 G + 256^2 B, as COCO panoptic files), "segment_ids" ([H, W] int64, the same ids as a tensor)
        and "segments_info" (a list of {"id", "category_id", "isthing", "iscrowd": 0, "area", "bbox":
        [x, y, w, h]}). Segment ids count from 0 as the official code's; an image without any segment is
        all 0 with no segments_info.
    """
    processed = torch.as_tensor(processed_sizes).tolist()
    targets = processed if target_sizes is None else torch.as_tensor(target_sizes).tolist()
    if not len(processed) == len(targets) == len(outputs["pred_logits"]):
        raise ValueError(f"processed_sizes ({len(processed)}) and target_sizes ({len(targets)}) need one (height, "
                         f"width) per image ({len(outputs['pred_logits'])})")
    sigmoid = uses_sigmoid(class_loss)
    threshold = PANOPTIC_THRESHOLDS[class_loss] if threshold is None else threshold
    padded = tuple(max(s[i] for s in processed) for i in (0, 1)) if crop_padding else None
    return [_panoptic_image(logits, masks, tuple(size), tuple(target), is_thing, threshold, sigmoid, padded)
            for logits, masks, size, target in zip(outputs["pred_logits"], outputs["pred_masks"], processed, targets)]


def _panoptic_image(logits: Tensor, masks: Tensor, size: tuple[int, int], target: tuple[int, int],
                    is_thing: Callable[[int], bool], threshold: float, sigmoid: bool,
                    padded: tuple[int, int] | None = None) -> dict[str, Any]:
    """One image: logits [Q, C(+1)], masks [Q, h, w] -> its panoptic prediction (see postprocess_panoptic);
    `padded`: the batch's largest processed size, to which the masks are upsampled before the image is cropped."""
    if sigmoid:
        scores, labels = logits.sigmoid().max(-1)
        keep = scores > threshold
    else:
        scores, labels = logits.softmax(-1).max(-1)
        keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)
    labels, masks = labels[keep], masks[keep]
    if len(masks) and padded is not None:
        masks = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
        masks = masks[:, : size[0], : size[1]].flatten(1)  # [K, h*w]
    elif len(masks):
        masks = F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0].flatten(1)  # [K, h*w]
    else:  # (interpolate refuses 0 channels)
        masks = masks.new_zeros((0, size[0] * size[1]))
    stuff: dict[int, list[int]] = defaultdict(list)  # stuff class -> its segments (indices into the kept)
    for k, label in enumerate(labels.tolist()):
        if not is_thing(label):
            stuff[label].append(k)
    ids, area = _segment_ids(masks, size, target, list(stuff.values()))
    while len(labels) and (area <= 4).any():
        # as the official code: after dropping, the pixels are assigned again without merging stuff (the
        # merged-away segments had area 0 and are dropped with the small ones)
        big = area > 4
        labels, masks = labels[big], masks[big]
        ids, area = _segment_ids(masks, size, target, [])
    return _panoptic_result(ids, labels.tolist(), area.tolist(), is_thing)


def _segment_ids(masks: Tensor, size: tuple[int, int], target: tuple[int, int],
                 merge: list[list[int]]) -> tuple[np.ndarray, Tensor]:
    """Per pixel the segment with the largest mask [H, W] (at `target`), and each segment's area [K].

    masks [K, h*w] at `size` (h, w); each list in `merge` becomes its first segment.
    """
    h, w = size
    if len(masks) == 0:
        ids = torch.zeros((h, w), dtype=torch.long)
    else:  # argmax of the softmax, not of the logits, for the official tie-breaking between rounded equal values
        ids = masks.transpose(0, 1).softmax(-1).argmax(-1).view(h, w).cpu()
    for group in merge:
        for k in group[1:]:
            ids[ids == k] = group[0]
    # resized as the official code does: its RGB encoding through PIL's nearest resampling
    rgb = Image.fromarray(id_to_rgb(ids.numpy())).resize((target[1], target[0]), resample=Image.NEAREST)
    ids_np = rgb_to_id(np.asarray(rgb))
    area = torch.bincount(torch.from_numpy(ids_np).flatten(), minlength=len(masks))[: len(masks)]
    return ids_np, area


def _panoptic_result(ids: np.ndarray, labels: list[int], area: list[int],
                     is_thing: Callable[[int], bool]) -> dict[str, Any]:
    segments = []
    for i, (label, a) in enumerate(zip(labels, area)):
        ys, xs = np.nonzero(ids == i)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if a else \
            [0, 0, 0, 0]
        segments.append({"id": i, "category_id": label, "isthing": bool(is_thing(label)), "iscrowd": 0,
                         "area": int(a), "bbox": bbox})
    with io.BytesIO() as buffer:
        Image.fromarray(id_to_rgb(ids)).save(buffer, format="PNG")
        png = buffer.getvalue()
    return {"png_string": png, "segment_ids": torch.from_numpy(ids), "segments_info": segments}
