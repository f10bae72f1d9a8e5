"""Turn DETR outputs into per-image detections in pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .box_ops import cxcywh_to_xyxy, scale_boxes


@torch.no_grad()
def postprocess(outputs: dict[str, Any], target_sizes: Tensor | Sequence[Sequence[int]]) -> list[dict[str, Tensor]]:
    """Scores, labels and xyxy pixel boxes for every query of every image.

    Args:
        outputs: the model's output dict ("pred_logits" [B, Q, C+1], "pred_boxes" [B, Q, 4]).
        target_sizes: [B, 2] (height, width) of each original image; boxes are scaled to it.

    Returns:
        One dict per image: "scores" [Q], "labels" [Q] (the best real class; "no object" is
        dropped before the max), "boxes" [Q, 4] as (x0, y0, x1, y1) pixels.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    sizes = torch.as_tensor(target_sizes, device=boxes.device)
    if sizes.shape != (len(logits), 2):
        raise ValueError(f"target_sizes: expected shape ({len(logits)}, 2) as (height, width) per image, "
                         f"got {tuple(sizes.shape)}")
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, Q]
    pixel_boxes = scale_boxes(cxcywh_to_xyxy(boxes), sizes)  # [B, Q, 4]
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, pixel_boxes)]
