"""Sigmoid classification heads: the varifocal, MAL and focal losses and the focal matching cost they share.

With `class_loss="varifocal"` the class head has num_classes sigmoid outputs and no "no object"
class (RT-DETR's varifocal loss; Align-DETR's IA-BCE and Stable-DINO train the same way): a matched
query is pushed toward the IoU of its box with its target in its target's class, every other score
toward 0, with the focal weight alpha * p^gamma on those negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8


def focal_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The matcher's class cost of a sigmoid head (Deformable DETR's): [N, C] logits, [T] labels -> [N, T].

    The focal loss of calling the query positive for that class minus the loss of calling it negative.
    """
    return focal_cost_of_scores(logits.sigmoid()[:, labels], alpha, gamma)


def focal_cost_of_scores(prob: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """`focal_cost` of given scores [N, T] (each query's score of each target's class, perhaps IoU-modulated)."""
    positive = alpha * (1 - prob) ** gamma * -(prob + EPS).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + EPS).log()
    return positive - negative


def varifocal_loss(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor,
                   num_boxes: float, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Varifocal loss summed over queries and classes, divided by the number of target boxes.

    Args:
        logits: [B, Q, C] class logits of a sigmoid head.
        matched: (batch index, query index) [N] each, of the matched queries.
        labels: [N] their target classes.
        ious: [N] IoU of each matched box with its target (the soft target; no gradient flows into it).
        num_boxes: target boxes across the batch (and processes), at least 1.
    """
    return varifocal_terms(logits, matched, labels, ious, alpha, gamma).sum() / num_boxes


def varifocal_terms(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor,
                    alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """`varifocal_loss` of every element [B, Q, C], before the sum."""
    target = torch.zeros_like(logits)  # [B, Q, C] soft targets: the IoU at (matched query, its class)
    target[matched[0], matched[1], labels] = ious.detach().to(logits.dtype)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[matched[0], matched[1], labels] = True
    prob = logits.sigmoid().detach()
    weight = torch.where(positive, target, alpha * prob**gamma)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")


def mal_loss(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor, num_boxes: float,
             gamma: float = 1.5) -> Tensor:
    """DEIM's matchability-aware loss (arXiv 2412.04234; DEIM engine/deim/deim_criterion.py `loss_labels_mal`).

    Binary cross-entropy toward IoU^gamma at each matched (query, class), 0 elsewhere; positives weighted 1
    (a low-IoU match still counts fully, unlike varifocal's IoU weight), negatives p^gamma (DEIM's default,
    no alpha). Summed over queries and classes, divided by `num_boxes`. Arguments as `varifocal_loss`'s.
    """
    return mal_terms(logits, matched, labels, ious, gamma).sum() / num_boxes


def mal_terms(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor, ious: Tensor,
              gamma: float = 1.5) -> Tensor:
    """`mal_loss` of every element [B, Q, C], before the sum."""
    target = torch.zeros_like(logits)  # [B, Q, C] soft targets IoU^gamma
    target[matched[0], matched[1], labels] = ious.detach().to(logits.dtype) ** gamma
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[matched[0], matched[1], labels] = True
    weight = torch.where(positive, torch.ones_like(logits), logits.sigmoid().detach() ** gamma)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")


def sigmoid_focal_loss(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor, num_boxes: float,
                       alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Conditional DETR's class loss: the sigmoid focal loss against one-hot targets (the matched query's class).

    Normalised as the official code (Atten4Vis/ConditionalDETR models/conditional_detr.py `loss_labels` and
    models/segmentation.py `sigmoid_focal_loss`): the mean over queries, summed over images and classes,
    divided by `num_boxes`, times the number of queries; i.e. the sum over everything divided by num_boxes.

    Args:
        logits: [B, Q, C] class logits.
        matched: (batch index, query index) [N] each, of the matched queries; labels [N] their classes.
    """
    return focal_terms(logits, one_hot(logits, matched, labels), alpha, gamma).mean(1).sum() / num_boxes * logits.shape[1]


def one_hot(logits: Tensor, matched: tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
    """[B, Q, C] zeros like `logits`, with 1 at each matched (image, query, class)."""
    target = torch.zeros_like(logits)
    target[matched[0], matched[1], labels] = 1.0
    return target


def focal_terms(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The sigmoid focal loss (RetinaNet) of every element, in the official order of operations; alpha < 0: no
    alpha weighting. logits and target (0 / 1) of any one shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss
