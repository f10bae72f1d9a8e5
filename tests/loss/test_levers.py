"""The opt-in training levers of issue #24 (MAL, IoU-aware matching, one-to-many), each against a float64 formula
or a brute force written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import detr

from ..helpers.train import float64_images as images

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 2,
        "dim_feedforward": 64, "num_queries": 6, "dropout": 0.0}
NUM_CLASSES = 4


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
    assert criterion.matcher.focal and criterion.weight_dict["loss_mal"] == 1.0
    assert "loss_mal_0" in criterion.weight_dict
    losses = criterion(net(images()), targets())
    assert "loss_ce" not in losses and "loss_vfl" not in losses
    criterion.total_loss(losses).backward()
    assert net.class_embed.weight.grad.abs().sum() > 0


# --- IoU-modulated matching cost (Stable-DINO / Align-DETR) --------------------------------------

def giou(a: list[float], b: list[float]) -> float:
    """Generalised IoU of two cxcywh boxes, written out."""
    hull = ((max(a[0] + a[2] / 2, b[0] + b[2] / 2) - min(a[0] - a[2] / 2, b[0] - b[2] / 2))
            * (max(a[1] + a[3] / 2, b[1] + b[3] / 2) - min(a[1] - a[3] / 2, b[1] - b[3] / 2)))
    i = iou(a, b)
    inter = i * (a[2] * a[3] + b[2] * b[3]) / (1 + i)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return i - (hull - union) / hull


def brute_cost(logits: torch.Tensor, boxes: torch.Tensor, target: dict, power: float, focal: bool) -> torch.Tensor:
    """The matching cost of every (query, target) pair of one image, one entry at a time: 5 L1 + 2 class - 2 GIoU,
    the class cost read at the score p * IoU^power (focal: Deformable DETR's focal cost of it; softmax: -it)."""
    cost = torch.zeros(len(boxes), len(target["labels"]), dtype=torch.float64)
    for i, j in itertools.product(range(len(boxes)), range(len(target["labels"]))):
        b, t = boxes[i].tolist(), target["boxes"][j].tolist()
        c = int(target["labels"][j])
        p = 1 / (1 + math.exp(-logits[i, c].item())) if focal else logits[i].softmax(-1)[c].item()
        s = p * iou(b, t) ** power
        cls = (0.25 * (1 - s) ** 2 * -math.log(s + 1e-8) - 0.75 * s**2 * -math.log(1 - s + 1e-8)) if focal else -s
        cost[i, j] = 5 * sum(abs(x - y) for x, y in zip(b, t)) + (2 if focal else 1) * cls - 2 * giou(b, t)
    return cost


def random_outputs(seed: int, queries: int = 6, classes: int = NUM_CLASSES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(2, queries, 2, generator=g) * 0.5 + 0.25,
                       torch.rand(2, queries, 2, generator=g) * 0.3 + 0.1], -1).double()
    return {"pred_logits": torch.randn(2, queries, classes, generator=g, dtype=torch.float64), "pred_boxes": boxes}


@pytest.mark.parametrize("focal", [True, False])
def test_iou_modulated_matching_is_scipys_assignment_of_the_brute_force_cost(focal):
    from scipy.optimize import linear_sum_assignment

    from detr.loss.matcher import HungarianMatcher

    power = 0.5
    matcher = HungarianMatcher(2.0 if focal else 1.0, 5.0, 2.0, focal=focal, iou_power=power)
    for seed in range(4):
        out = random_outputs(seed, classes=NUM_CLASSES if focal else NUM_CLASSES + 1)
        got, costs = matcher(out, targets()), matcher.cost_matrix(out, targets()).split([3, 1], dim=-1)
        for b, t in enumerate(targets()):
            cost = brute_cost(out["pred_logits"][b], out["pred_boxes"][b], t, power, focal)
            assert torch.allclose(costs[b][b], cost, rtol=1e-12, atol=1e-12)
            rows, cols = linear_sum_assignment(cost.numpy())
            assert got[b][0].tolist() == rows.tolist() and got[b][1].tolist() == cols.tolist()


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_every_layer_of_every_group_is_matched_and_scored_on_its_own(class_loss):
    """The criterion computes all decoder layers of all query groups side by side; each layer's loss_bbox and
    loss_giou must still be the formula on scipy's assignment of that layer's own brute-force cost, averaged
    over the groups."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import generalized_box_iou

    focal = class_loss == "focal"
    classes = NUM_CLASSES if focal else NUM_CLASSES + 1
    groups = [random_outputs(10 + g, classes=classes) for g in range(3)]
    for g, out in enumerate(groups):
        out["aux_outputs"] = [random_outputs(20 + 2 * g + i, classes=classes) for i in range(2)]
    outputs = {**groups[0], "groups": groups[1:]}
    losses = detr.create_criterion(NUM_CLASSES, dec_layers=3, class_loss=class_loss)(outputs, targets())

    def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)

    for layer, suffix in ((0, "_0"), (1, "_1"), (None, "")):
        l1 = giou = 0.0
        for out in groups:
            pred = out if layer is None else out["aux_outputs"][layer]
            for b, t in enumerate(targets()):
                rows, cols = linear_sum_assignment(brute_cost(pred["pred_logits"][b], pred["pred_boxes"][b], t,
                                                              0.0, focal).numpy())
                src, tgt = pred["pred_boxes"][b, rows], t["boxes"][cols]
                l1 += (src - tgt).abs().sum().item()
                giou += (1 - generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)).diagonal()).sum().item()
        assert losses["loss_bbox" + suffix].item() == pytest.approx(l1 / 4 / 3, rel=1e-12)  # 4 boxes, 3 groups
        assert losses["loss_giou" + suffix].item() == pytest.approx(giou / 4 / 3, rel=1e-12)


def test_iou_modulation_prefers_the_query_on_the_box():
    """A confident query far from the box against a hesitant one on it: the plain class cost picks the first,
    the IoU-modulated one the second."""
    from detr.loss.matcher import HungarianMatcher

    out = {"pred_logits": torch.tensor([[[3.0, 0.0], [0.0, 0.0]]], dtype=torch.float64),
           "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.52, 0.5, 0.2, 0.2]]], dtype=torch.float64)}
    t = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)}]
    only_class = {"cost_class": 1.0, "cost_bbox": 0.0, "cost_giou": 0.0}
    assert HungarianMatcher(**only_class)(out, t)[0][0].tolist() == [0]
    assert HungarianMatcher(**only_class, iou_power=1.0)(out, t)[0][0].tolist() == [1]
    with pytest.raises(ValueError, match="matcher_iou_power must be >= 0"):
        HungarianMatcher(iou_power=-1.0)


# --- one-to-many supervision (MS-DETR) -----------------------------------------------------------

def brute_one2many(cost: torch.Tensor, k: int) -> set[tuple[int, int]]:
    """The (query, target) pairs of the cheapest assignment of K copies of each target to distinct queries,
    by trying every one."""
    n = cost.shape[1]
    columns = [j for _ in range(k) for j in range(n)]
    best = min(itertools.permutations(range(cost.shape[0]), len(columns)),
               key=lambda qs: sum(cost[q, j].item() for q, j in zip(qs, columns)))
    return set(zip(best, columns))


def test_one2many_matching_is_the_brute_force_assignment_of_k_copies():
    from detr.loss.matcher import HungarianMatcher

    matcher = HungarianMatcher(2.0, 5.0, 2.0, focal=True)
    two = [{"labels": t["labels"][:2], "boxes": t["boxes"][:2]} for t in targets()]  # 2 and 1 targets
    for seed in range(3):
        out = random_outputs(seed)
        got = matcher(out, two, repeats=3)
        for b, t in enumerate(two):
            expected = brute_one2many(brute_cost(out["pred_logits"][b], out["pred_boxes"][b], t, 0.0, True), 3)
            assert set(zip(got[b][0].tolist(), got[b][1].tolist())) == expected
            assert len(got[b][0]) == 3 * len(t["labels"])


def test_one2many_losses_are_the_formula_on_the_k_fold_matching():
    """loss_bbox_o2m: the L1 of the brute-force K-fold matching over K * N boxes; weighted as set."""
    k = 2
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=2, class_loss="focal", k_one2many=k,
                                      one2many_loss_coef=0.5)
    assert criterion.weight_dict["loss_bbox_o2m"] == 2.5 and criterion.weight_dict["loss_ce_o2m_0"] == 1.0
    out = random_outputs(7)
    out["aux_outputs"] = [random_outputs(8)]
    losses = criterion(out, targets())
    for layer, suffix in ((out, ""), (out["aux_outputs"][0], "_0")):
        l1 = 0.0
        for b, t in enumerate(targets()):
            pairs = brute_one2many(brute_cost(layer["pred_logits"][b], layer["pred_boxes"][b], t, 0.0, True), k)
            l1 += sum((layer["pred_boxes"][b, q] - t["boxes"][j]).abs().sum().item() for q, j in pairs)
        assert losses[f"loss_bbox_o2m{suffix}"].item() == pytest.approx(l1 / (k * 4), rel=1e-12)
    assert "loss_bbox_o2m" not in detr.create_criterion(NUM_CLASSES, dec_layers=2, class_loss="focal")(out, targets())


def test_a_model_trained_with_one2many_is_the_plain_model_at_inference():
    """The lever is a loss only: the trained weights load strictly into the plain architecture, same outputs."""
    torch.manual_seed(0)
    trained = detr.create_model("detr_r50", num_classes=NUM_CLASSES, **TINY).double().train()
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=2, k_one2many=3)
    losses = criterion(trained(images()), targets())
    criterion.total_loss(losses).backward()
    with torch.no_grad():
        for p in trained.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    plain = detr.create_model("detr_r50", num_classes=NUM_CLASSES, **TINY).double()
    plain.load_state_dict(trained.state_dict())  # strict: no extra or missing keys
    with torch.no_grad():
        a, b = trained.eval()(images()), plain.eval()(images())
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
