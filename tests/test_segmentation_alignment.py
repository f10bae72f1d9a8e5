"""The segmentation model, its losses and postprocessing side by side with the official models/segmentation.py
(detr==0.1.4): identical random weights, a small transformer on ResNet-50 (the official mask head reads its
1024/512/256-channel layers), two images of different sizes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import detr

from . import official
from .test_alignment import float64_gate, to_float64

SMALL = {"hidden_dim": 128, "nheads": 8, "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 128,
         "num_queries": 10, "num_classes": 20}


def make_pair(ref, **extra):
    """The official DETRsegm with random weights (the mask head's GroupNorms too), and ours loaded from it."""
    kw = {**SMALL, **extra}
    theirs = official.build_model(ref, masks=True, **kw)
    with torch.no_grad():  # GroupNorm starts at weight 1, bias 0: random values so that a swapped one shows
        for name, p in theirs.named_parameters():
            if ".gn" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    ours = detr.create_model("detr_r50", masks=True, **kw)
    ours.load_state_dict(detr.convert_official_state_dict(theirs.state_dict()))
    return theirs, ours


def two_images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 96, 128, generator=g), torch.randn(3, 120, 88, generator=g)]


def random_targets(images: list[torch.Tensor], num_classes: int = 20, counts=(3, 2), seed: int = 2) -> list[dict]:
    """Boxes, labels and random blob masks at each image's size."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for img, n in zip(images, counts):
        h, w = img.shape[-2:]
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        coarse = torch.rand(n, 1, h // 8, w // 8, generator=g)
        masks = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[:, 0] > 0.6
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g),
                        "boxes": torch.cat([centre, size], dim=1), "masks": masks})
    return targets


@pytest.mark.reference
def test_pred_masks_match_official_in_eval(ref):
    theirs, ours = make_pair(ref)
    images = two_images()
    with torch.no_grad():
        a = theirs.eval()(images)
        b = ours.eval()(images)
    assert b["pred_masks"].shape == a["pred_masks"].shape == (2, 10, 30, 32)
    assert (a["pred_masks"] - b["pred_masks"]).abs().max() <= 1e-4
    assert (a["pred_logits"] - b["pred_logits"]).abs().max() <= 1e-4
    assert (a["pred_boxes"] - b["pred_boxes"]).abs().max() <= 1e-5
