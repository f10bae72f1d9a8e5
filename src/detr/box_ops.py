"""Box helpers on top of torchvision.ops: DETR predicts normalised (cx, cy, w, h) boxes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def pairwise_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of every pair: [N, 4] x [M, 4] xyxy -> [N, M]."""
    return generalized_box_iou(boxes1, boxes2)


def elementwise_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of matching rows: [N, 4] x [N, 4] xyxy -> [N].

    Uses torchvision's batched form with a singleton pair axis, so the arithmetic is the
    same as the diagonal of the pairwise matrix without building the N x N matrix.
    """
    return generalized_box_iou(boxes1[:, None], boxes2[:, None]).reshape(-1)


def box_iou_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching rows: [N, 4] x [N, 4] xyxy -> [N] (torchvision's box_iou with a pair axis)."""
    return box_iou(boxes1[:, None], boxes2[:, None]).reshape(-1)


def scale_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Normalised xyxy boxes [B, Q, 4] to pixels, given image sizes [B, 2] as (height, width)."""
    h, w = sizes.unbind(-1)
    scale = torch.stack([w, h, w, h], dim=-1).to(boxes.dtype)  # [B, 4]
    return boxes * scale[:, None, :]
