"""Mosaic and mixup on a share of the training images (DEIM's "dense one-to-one" augmentation, arXiv 2412.04234).

Both act on the items the training transforms produced (normalised image [3, H, W], target with "boxes" cxcywh in
[0, 1] and "size" (H, W)), so every item keeps the official augmentation first:

- mosaic: the item and 3 random others in a 2 x 2 grid (top-left, top-right, bottom-left, bottom-right; each
  column as wide as its widest image, each row as tall as its tallest; gaps are 0, the mean colour after
  normalisation), then resized to half its sides, so an image of 4x the objects costs about one image;
- mixup: the item and a random other blended (weight uniform in [0.45, 0.55], DEIM's) on a canvas of the larger
  height and width, both images at the top left, both sets of boxes kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

Item = tuple[Tensor, dict[str, Tensor]]


def _pixel_boxes(target: dict[str, Tensor]) -> Tensor:
    """A target's cxcywh [0, 1] boxes as xyxy pixels of its image [N, 4]."""
    h, w = target["size"].tolist()
    cx, cy, bw, bh = target["boxes"].unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)


def _normalised(boxes: Tensor, height: int, width: int) -> Tensor:
    """xyxy pixel boxes [N, 4] of a (height, width) canvas -> cxcywh in [0, 1]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], -1)


def _paste(items: list[Item], offsets: list[tuple[int, int]], height: int, width: int,
           weights: list[float]) -> Item:
    """Items added (times `weights`) into a zero canvas at (top, left) `offsets`, their boxes and per-box
    fields concatenated; the other fields are the first item's."""
    canvas = items[0][0].new_zeros(items[0][0].shape[0], height, width)  # [3, H, W]
    boxes = []
    for (image, target), (top, left), weight in zip(items, offsets, weights):
        canvas[:, top: top + image.shape[1], left: left + image.shape[2]] += weight * image
        boxes.append(_pixel_boxes(target) + torch.tensor([left, top, left, top], dtype=torch.float32))
    target = dict(items[0][1])
    for key in ("labels", "area", "iscrowd"):
        if key in target:
            target[key] = torch.cat([t[key] for _, t in items])
    target["boxes"] = _normalised(torch.cat(boxes), height, width).to(items[0][1]["boxes"].dtype)
    target["size"] = torch.tensor([height, width])
    return canvas, target


def mosaic(items: list[Item]) -> Item:
    """Four items in a 2 x 2 grid, resized to half its sides (module docstring)."""
    if len(items) != 4:
        raise ValueError(f"mosaic: needs 4 items, got {len(items)}")
    (h0, w0), (h1, w1), (h2, w2), (h3, w3) = [tuple(image.shape[1:]) for image, _ in items]
    top, left = max(h0, h1), max(w0, w2)
    height, width = top + max(h2, h3), left + max(w1, w3)
    image, target = _paste(items, [(0, 0), (0, left), (top, 0), (top, left)], height, width, [1.0] * 4)
    small = [max(1, height // 2), max(1, width // 2)]
    if "area" in target:  # pixel areas of the resized canvas
        target["area"] = target["area"] * (small[0] * small[1] / (height * width))
    target["size"] = torch.tensor(small)
    return F.resize(image, small, antialias=True), target  # normalised boxes are unchanged by the resize


def mixup(items: list[Item], weight: float) -> Item:
    """Two items blended, `weight` times the first plus 1 - `weight` times the second; both sets of boxes."""
    if len(items) != 2:
        raise ValueError(f"mixup: needs 2 items, got {len(items)}")
    height = max(image.shape[1] for image, _ in items)
    width = max(image.shape[2] for image, _ in items)
    return _paste(items, [(0, 0), (0, 0)], height, width, [weight, 1 - weight])


class MosaicMixup(Dataset):
    """`dataset` whose items become a mosaic with probability `mosaic_prob`, then a mixup with probability
    `mixup_prob`; the partners are drawn with torch's RNG (seeded per worker, as the transforms)."""

    def __init__(self, dataset: Any, mosaic_prob: float = 0.0, mixup_prob: float = 0.0):
        for name, p in (("mosaic_prob", mosaic_prob), ("mixup_prob", mixup_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"--{name} must be in [0, 1] (0: off), got {p}")
        self.dataset, self.mosaic_prob, self.mixup_prob = dataset, mosaic_prob, mixup_prob

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # the wrapped dataset's report, coco, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _other(self) -> Item:
        return self.dataset[int(torch.randint(len(self.dataset), ()))]

    def __getitem__(self, index: int) -> Item:
        item = self.dataset[index]
        if torch.rand(()) < self.mosaic_prob:
            item = mosaic([item, *(self._other() for _ in range(3))])
        if torch.rand(()) < self.mixup_prob:
            item = mixup([item, self._other()], float(torch.empty(()).uniform_(0.45, 0.55)))
        return item
