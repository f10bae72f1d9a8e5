"""Turn DETR outputs into per-image detections in pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..box_ops import cxcywh_to_xyxy, scale_boxes

SIGMOID_HEADS = ("varifocal", "focal")


@torch.no_grad()
def postprocess(outputs: dict[str, Any], target_sizes: Tensor | Sequence[Sequence[int]], class_loss: str = "softmax",
                top_k: int = 100) -> list[dict[str, Tensor]]:
    """Scores, labels and xyxy pixel boxes of every image's detections.

    Args:
        outputs: the model's output dict ("pred_logits" [B, Q, C+1] or [B, Q, C], "pred_boxes" [B, Q, 4]).
        target_sizes: [B, 2] (height, width) of each original image; boxes are scaled to it.
        class_loss: the model's head. "softmax": one detection per query, its best real class ("no
            object" is dropped before the max). "varifocal" or "focal" (sigmoid heads): sigmoid scores,
            the `top_k` best (query, class) pairs of each image, best first (Conditional DETR's top 100).
        top_k: detections per image of a sigmoid head.

    Returns:
        One dict per image: "scores" [N], "labels" [N], "boxes" [N, 4] as (x0, y0, x1, y1) pixels and
        "queries" [N], the query each detection comes from.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    sizes = torch.as_tensor(target_sizes, device=boxes.device)
    if sizes.shape != (len(logits), 2):
        raise ValueError(f"target_sizes: expected shape ({len(logits)}, 2) as (height, width) per image, "
                         f"got {tuple(sizes.shape)}")
    found = select_detections(logits, boxes, sizes, class_loss, top_k if class_loss in SIGMOID_HEADS else None)
    return [{"scores": s, "labels": lab, "boxes": bx, "queries": qu} for s, lab, bx, qu in zip(*found)]


def select_detections(logits: Tensor, boxes: Tensor, sizes: Tensor, class_loss: str = "softmax",
                      top_k: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The batched detections behind `postprocess` (written to trace into an ONNX graph as well).

    Args:
        logits: [B, Q, C+1] (softmax head) or [B, Q, C] (sigmoid heads).
        boxes: [B, Q, 4] (cx, cy, w, h) in [0, 1].
        sizes: [B, 2] (height, width) of each original image, any number type.
        class_loss: "softmax", "varifocal" or "focal".
        top_k: softmax head: None keeps every query in query order (the official PostProcess), k
            keeps the k best queries, best first. Sigmoid heads: the k best (query, class) pairs
            over Q x C, best first (None: 100).

    Returns:
        scores [B, N], labels [B, N], boxes [B, N, 4] (x0, y0, x1, y1) pixels, queries [B, N].
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    pixel_boxes = scale_boxes(cxcywh_to_xyxy(boxes), sizes)  # [B, Q, 4]
    b, q, c = logits.shape
    if class_loss in SIGMOID_HEADS:
        scores, index = logits.sigmoid().flatten(1).topk(min(top_k or 100, q * c), dim=1)  # [B, K] over Q x C
        queries, labels = index // c, index % c
    elif class_loss == "softmax":
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, Q]
        if top_k is None:
            queries = torch.arange(q, device=logits.device).expand(b, q)
        else:
            scores, queries = scores.topk(min(top_k, q), dim=1)  # [B, K] best first
            labels = labels.gather(1, queries)
    else:
        raise ValueError(f"class_loss must be softmax, varifocal or focal, got {class_loss!r}")
    picked = pixel_boxes.gather(1, queries[..., None].expand(-1, -1, 4))  # [B, N, 4]
    return scores, labels, picked, queries
