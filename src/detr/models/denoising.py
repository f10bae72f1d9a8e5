"""Denoising queries (DN-DETR, arXiv 2203.01305), a training-only aid to faster convergence.

Each training image's ground-truth boxes and labels, with noise added, become extra decoder queries
that must reconstruct them: no matching is needed, which steadies the early training that the
Hungarian matching makes unstable. For a vanilla DETR (whose queries are a learned position with a
zero decoder input) a noised label enters through a label embedding as the query's decoder input,
and a noised box through a small MLP as its position. `dn_number` groups of such queries are
appended after the object queries; an attention mask keeps the object queries from seeing them and
each group from seeing the others. At inference nothing of this runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class NoisedTargets:
    """The reconstruction targets of D = groups x group_size denoising queries per image."""

    labels: Tensor  # [B, D] int64: the ground-truth class each query must name (0 on padding slots)
    boxes: Tensor  # [B, D, 4] the ground-truth boxes (cxcywh)
    noised_labels: Tensor  # [B, D] what the queries are given
    noised_boxes: Tensor  # [B, D, 4]
    valid: Tensor  # [B, D] bool: False on the padding slots of images with fewer boxes
    groups: int
    group_size: int  # the most boxes of an image in the batch (at least 1)


def noise_targets(targets: list[dict[str, Tensor]], groups: int, box_noise: float, label_noise: float,
                  num_classes: int) -> NoisedTargets:
    """`groups` noised copies of every image's boxes and labels, padded to the batch's largest image.

    Labels are replaced by a uniformly drawn class with probability `label_noise / 2` (DINO's
    convention); box centres move by up to `box_noise` x half the box size, and sizes by up to
    `box_noise` x the size (DN-DETR), clamped to [0, 1]. Draws come from the global RNG.
    """
    device = targets[0]["boxes"].device
    size = max([len(t["labels"]) for t in targets] + [1])
    b, d = len(targets), groups * size
    labels = torch.zeros(b, d, dtype=torch.int64, device=device)
    boxes = torch.zeros(b, d, 4, device=device)
    valid = torch.zeros(b, d, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(groups):
            labels[i, g * size:g * size + n] = t["labels"]
            boxes[i, g * size:g * size + n] = t["boxes"].to(boxes.dtype)
            valid[i, g * size:g * size + n] = True
    flip = torch.rand(b, d, device=device) < label_noise / 2
    noised_labels = torch.where(flip, torch.randint(0, num_classes, (b, d), device=device), labels)
    wh = boxes[..., 2:]
    shift = torch.cat([wh / 2, wh], dim=-1) * (torch.rand(b, d, 4, device=device) * 2 - 1) * box_noise
    noised_boxes = (boxes + shift).clamp(0.0, 1.0)
    return NoisedTargets(labels, boxes, noised_labels, noised_boxes, valid, groups, size)


def denoising_attention_mask(num_queries: int, groups: int, group_size: int, device: torch.device) -> Tensor:
    """[Q+D, Q+D] bool, True where a query may not look: object queries see no denoising query, and a
    denoising group sees the object queries and itself only."""
    d = groups * group_size
    blocked = torch.ones(num_queries + d, num_queries + d, dtype=torch.bool, device=device)
    blocked[:, :num_queries] = False  # everyone sees the object queries
    for g in range(groups):
        start = num_queries + g * group_size
        blocked[start:start + group_size, start:start + group_size] = False
    return blocked


class Denoising(nn.Module):
    """The embeddings that turn noised targets into decoder inputs (label) and query positions (box)."""

    def __init__(self, num_classes: int, hidden_dim: int, groups: int, box_noise: float, label_noise: float):
        super().__init__()
        self.groups, self.box_noise, self.label_noise = groups, box_noise, label_noise
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes, hidden_dim)
        self.box_embed = nn.Sequential(nn.Linear(4, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, targets: list[dict[str, Tensor]],
                num_queries: int) -> tuple[NoisedTargets, tuple[Tensor, Tensor, Tensor]]:
        """The noised targets, and (decoder input [B, D, E], position [B, D, E], self-attention mask)."""
        noised = noise_targets(targets, self.groups, self.box_noise, self.label_noise, self.num_classes)
        content = self.label_embed(noised.noised_labels) * noised.valid[..., None]  # padding slots: zeros
        position = self.box_embed(noised.noised_boxes.to(content.dtype)) * noised.valid[..., None]
        mask = denoising_attention_mask(num_queries, noised.groups, noised.group_size, content.device)
        return noised, (content, position, mask)
