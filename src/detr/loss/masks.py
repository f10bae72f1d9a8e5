"""The mask losses of the segmentation model (official `loss_masks`): sigmoid focal and dice on matched masks.

As the official code: the target masks of the batch are zero-padded to the largest of them (bottom / right, as
the images are padded), the matched predictions [H/4, W/4] are upsampled to that size (bilinear,
align_corners=False), and both losses are summed over the matched pairs and divided by the number of target
boxes. Padding is not masked out of the loss (the official code does not either).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .focal import focal_terms


def dice_loss(logits: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """1 - the soft dice coefficient (with +1 smoothing) of each mask, summed, divided by num_boxes.

    logits [N, P] mask logits; targets [N, P] 0 / 1.
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def mask_focal_loss(logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25,
                    gamma: float = 2.0) -> Tensor:
    """The sigmoid focal loss averaged over each mask's pixels, summed over masks, divided by num_boxes.

    logits [N, P] mask logits; targets [N, P] 0 / 1.
    """
    return focal_terms(logits, targets, alpha, gamma).mean(1).sum() / num_boxes


def padded_target_masks(targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]],
                        like: Tensor) -> Tensor:
    """The matched target masks, in matching order, zero-padded to the largest mask of the batch [N, H, W]."""
    for i, t in enumerate(targets):
        if "masks" not in t or t["masks"].dim() != 3 or len(t["masks"]) != len(t["labels"]):
            shape = tuple(t["masks"].shape) if "masks" in t else None
            raise ValueError(f"targets[{i}]: the mask loss needs 'masks' [N, H, W] with one mask per label "
                             f"({len(t['labels'])}), got {shape}")
    h = max(t["masks"].shape[-2] for t in targets)
    w = max(t["masks"].shape[-1] for t in targets)
    padded = like.new_zeros((sum(len(j) for _, j in indices), h, w))
    start = 0
    for t, (_, j) in zip(targets, indices):
        masks = t["masks"][j.to(t["masks"].device)]  # [n, H_i, W_i]
        padded[start:start + len(j), : masks.shape[-2], : masks.shape[-1]] = masks.to(padded)
        start += len(j)
    return padded


def mask_losses(pred_masks: Tensor, targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]],
                num_boxes: float) -> dict[str, Tensor]:
    """`loss_mask` (focal) and `loss_dice` of the matched queries' masks.

    Args:
        pred_masks: [B, Q, h, w] mask logits (at 1/4 of the padded batch).
        targets: per image "masks" [N_i, H_i, W_i] (0 / 1, at the image's size as given to the model).
        indices: the matcher's (query, target) indices per image.
        num_boxes: target boxes across the batch (and processes), at least 1.
    """
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    src = pred_masks[batch_idx, query_idx]  # [N, h, w]
    target = padded_target_masks(targets, indices, src)  # [N, H, W]
    src = F.interpolate(src[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)
    src, target = src.flatten(1), target.flatten(1)  # [N, H*W]
    return {"loss_mask": mask_focal_loss(src, target, num_boxes), "loss_dice": dice_loss(src, target, num_boxes)}
