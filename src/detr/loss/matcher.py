"""Hungarian matching between predictions and ground truth."""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..box_ops import cxcywh_to_xyxy, pairwise_giou
from .focal import focal_cost


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising

        cost_bbox * L1(boxes) + cost_class * (-p(target class)) + cost_giou * (-GIoU),

    or, for a sigmoid head (`focal=True`), with the focal class cost of `varifocal.focal_cost`.
    Stateless: calling it twice on the same input gives the same answer.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of set_cost_class, set_cost_bbox, set_cost_giou must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """outputs: "pred_logits" [B, Q, C+1], "pred_boxes" [B, Q, 4]; targets: per image "labels" [N_i],
        "boxes" [N_i, 4] cxcywh.

        Returns per image (query indices, target indices), int64, of length min(Q, N_i).
        """
        b, q = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1)  # [B*Q, C+1], or [B*Q, C] for a sigmoid head
        boxes = outputs["pred_boxes"].flatten(0, 1)  # [B*Q, 4]
        tgt_labels = torch.cat([t["labels"] for t in targets])  # [T]
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)  # [T, 4]
        if self.focal:
            class_cost = focal_cost(logits, tgt_labels, self.focal_alpha, self.focal_gamma)  # [B*Q, T]
        else:
            class_cost = -logits.softmax(-1)[:, tgt_labels]

        # Every query against every target of the batch; each image keeps its own columns.
        cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                + self.cost_class * class_cost
                - self.cost_giou * pairwise_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes)))
        cost = cost.view(b, q, -1).cpu()  # [B, Q, T]

        sizes = [len(t["boxes"]) for t in targets]
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
