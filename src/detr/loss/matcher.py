"""Hungarian matching between predictions and ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from ..box_ops import cxcywh_to_xyxy, pairwise_giou
from .focal import focal_cost_of_scores


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising

        cost_bbox * L1(boxes) + cost_class * (-p(target class)) + cost_giou * (-GIoU),

    or, for a sigmoid head (`focal=True`), with the focal class cost of `focal.focal_cost`.
    With `iou_power` beta > 0 the class cost of a (query, target) pair is that of the IoU-modulated score
    p * IoU^beta instead of p (Stable-DINO's position-modulated cost, arXiv 2304.04742; Align-DETR's
    p^a * IoU^(1-a), arXiv 2304.07527, is the same idea): a query that scores well but misses the box
    matches less readily. Stateless: calling it twice on the same input gives the same answer.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0, iou_power: float = 0.0):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of set_cost_class, set_cost_bbox, set_cost_giou must be non-zero")
        if iou_power < 0:
            raise ValueError(f"matcher_iou_power must be >= 0 (0: the plain class cost), got {iou_power}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma
        self.iou_power = iou_power

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]],
                 repeats: int = 1) -> list[tuple[Tensor, Tensor]]:
        """outputs: "pred_logits" [B, Q, C+1], "pred_boxes" [B, Q, 4]; targets: per image "labels" [N_i],
        "boxes" [N_i, 4] cxcywh. `repeats` K > 1: one-to-many, each target stands K times (H-DETR's matching
        of K copies of the ground truth), so up to K queries match it.

        Returns per image (query indices, target indices), int64, of length min(Q, K * N_i); target indices
        are into the image's N_i targets.
        """
        return self.match_sets(outputs, targets, 1, repeats)[0]

    @torch.no_grad()
    def match_sets(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]], sets: int,
                   repeats: int = 1) -> list[list[tuple[Tensor, Tensor]]]:
        """Match `sets` prediction sets (decoder layers, query groups) placed side by side in `outputs`
        ("pred_logits" [B, S*Q, C], "pred_boxes" [B, S*Q, 4]: set s is queries s*Q..(s+1)*Q-1) each on its own,
        with one cost matrix for all. Returns per set what `__call__` returns, query indices within the set.
        """
        cost = self.cost_matrix(outputs, targets).cpu().numpy()  # [B, S*Q, T]
        q = cost.shape[1] // sets
        sizes = [len(t["boxes"]) for t in targets]
        ends = np.cumsum(sizes)
        matched = []
        for s in range(sets):
            per_image = []
            for i, (end, n) in enumerate(zip(ends, sizes)):
                c = cost[i, s * q:(s + 1) * q, end - n:end]  # [Q, N_i]
                rows, cols = linear_sum_assignment(np.tile(c, (1, repeats)))  # columns: K copies of the targets
                per_image.append((torch.from_numpy(rows).long(), torch.from_numpy(cols % max(n, 1)).long()))
            matched.append(per_image)
        return matched

    @torch.no_grad()
    def cost_matrix(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> Tensor:
        """The cost of every query against every target of the batch [B, Q, T] (image i's targets: its columns)."""
        b, q = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1)  # [B*Q, C+1], or [B*Q, C] for a sigmoid head
        boxes = outputs["pred_boxes"].flatten(0, 1)  # [B*Q, 4]
        tgt_labels = torch.cat([t["labels"] for t in targets])  # [T]
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)  # [T, 4]
        scores = (logits.sigmoid() if self.focal else logits.softmax(-1))[:, tgt_labels]  # [B*Q, T]
        if self.iou_power > 0:
            scores = scores * box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes)) ** self.iou_power
        class_cost = focal_cost_of_scores(scores, self.focal_alpha, self.focal_gamma) if self.focal else -scores
        cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                + self.cost_class * class_cost
                - self.cost_giou * pairwise_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes)))
        return cost.view(b, q, -1)
