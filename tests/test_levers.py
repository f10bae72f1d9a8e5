"""The opt-in training levers of issue #24 (MAL, IoU-aware matching, one-to-many), each against a float64 formula
or a brute force written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import detr

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 2,
        "dim_feedforward": 64, "num_queries": 6, "dropout": 0.0}
NUM_CLASSES = 4


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(3, 64, 96, generator=g, dtype=torch.float64),
            torch.randn(3, 80, 48, generator=g, dtype=torch.float64)]


def targets() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    boxes = torch.cat([torch.rand(3, 2, generator=g) * 0.5 + 0.25, torch.rand(3, 2, generator=g) * 0.3 + 0.1], 1)
    return [{"labels": torch.tensor([1, 3, 0]), "boxes": boxes.double()},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.2]], dtype=torch.float64)}]


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two cxcywh boxes, written out."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# --- MAL (DEIM) ----------------------------------------------------------------------------------

def test_mal_loss_is_deims_formula():
    from detr.loss.focal import mal_loss

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    matched = (torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2]))
    labels, ious = torch.tensor([2, 0, 1]), torch.tensor([0.7, 0.05, 0.35], dtype=torch.float64)
    gamma = 1.5
    got = mal_loss(logits, matched, labels, ious, num_boxes=3.0, gamma=gamma)
    total = 0.0
    for b, q, c in itertools.product(range(2), range(4), range(3)):
        p = 1 / (1 + math.exp(-logits[b, q, c].item()))
        hit = [i for i in range(3) if (matched[0][i], matched[1][i], labels[i]) == (b, q, c)]
        t = ious[hit[0]].item() ** gamma if hit else 0.0
        w = 1.0 if hit else p**gamma  # positives weigh 1 whatever their IoU; negatives p^gamma, no alpha
        total += -w * (t * math.log(p) + (1 - t) * math.log(1 - p))
    assert got.item() == pytest.approx(total / 3.0, rel=1e-12)


def test_mal_head_is_a_sigmoid_head_end_to_end():
    """--class_loss mal: C outputs, the focal matching cost, loss_mal weighted on every layer, sigmoid top-k."""
    from detr.config import Config, ModelConfig, check_choices, uses_sigmoid

    check_choices(Config(model=ModelConfig(class_loss="mal")))
    assert uses_sigmoid("mal")
    torch.manual_seed(0)
    net = detr.create_model("detr_r50", num_classes=NUM_CLASSES, class_loss="mal", **TINY).double().train()
    assert net.class_embed.out_features == NUM_CLASSES
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=2, class_loss="mal")
    assert criterion.matcher.focal and criterion.weight_dict["loss_mal"] == 1.0 and "loss_mal_0" in criterion.weight_dict
    losses = criterion(net(images()), targets())
    assert "loss_ce" not in losses and "loss_vfl" not in losses
    criterion.total_loss(losses).backward()
    assert net.class_embed.weight.grad.abs().sum() > 0
