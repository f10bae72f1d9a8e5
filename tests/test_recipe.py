"""Fast-convergence options, each checked in float64 against a formula or the plain DETR it must reduce to."""

from __future__ import annotations

import math

import pytest
import torch

import detr
from detr.training.train import load_finetune_weights

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 3,
        "dim_feedforward": 64, "num_queries": 6, "dropout": 0.0}
NUM_CLASSES = 5


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(3, 64, 96, generator=g, dtype=torch.float64),
            torch.randn(3, 80, 48, generator=g, dtype=torch.float64)]


def targets() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    boxes = torch.cat([torch.rand(3, 2, generator=g) * 0.5 + 0.25, torch.rand(3, 2, generator=g) * 0.3 + 0.1], 1)
    return [{"labels": torch.tensor([1, 3, 4]), "boxes": boxes.double()},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4, dtype=torch.float64)}]


def model(num_groups: int = 1) -> detr.DETR:
    torch.manual_seed(0)
    return detr.create_model("detr_r50", num_classes=NUM_CLASSES, num_groups=num_groups, **TINY).double().train()


def group_copies(single: detr.DETR, num_groups: int) -> detr.DETR:
    """A K-group model whose every group's queries are copies of `single`'s."""
    grouped = model(num_groups)
    state = single.state_dict()
    state["group_query_embed.weight"] = state["query_embed.weight"].repeat(num_groups - 1, 1)
    grouped.load_state_dict(state)
    return grouped


def assert_same_outputs(a: dict, b: dict) -> None:
    for x, y in zip([a, *a.get("aux_outputs", [])], [b, *b.get("aux_outputs", [])]):
        assert torch.allclose(x["pred_logits"], y["pred_logits"], rtol=0, atol=1e-12)
        assert torch.allclose(x["pred_boxes"], y["pred_boxes"], rtol=0, atol=1e-12)
    assert len(a.get("aux_outputs", [])) == len(b.get("aux_outputs", []))


def test_groups_of_identical_queries_are_the_single_group_model():
    """Every group of a K=3 model whose groups copy the K=1 queries gives the K=1 outputs and losses: the
    groups do not see each other. At inference only the first group runs."""
    single = model()
    grouped = group_copies(single, 3)
    expected = single(images())
    out = grouped(images())
    assert len(out["groups"]) == 2
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=3)
    expected_losses = criterion(expected, targets())
    for group in [out, *out["groups"]]:
        assert_same_outputs(group, expected)
        losses = criterion({k: v for k, v in group.items() if k != "groups"}, targets())
        assert losses.keys() == expected_losses.keys()
        for k in losses:
            assert torch.allclose(losses[k], expected_losses[k], rtol=1e-12, atol=0), k
    mean = criterion(out, targets())
    for k in expected_losses:
        assert torch.allclose(mean[k], expected_losses[k], rtol=1e-12, atol=0), k
    with torch.no_grad():
        inference = grouped.eval()(images())
    assert "groups" not in inference
    assert_same_outputs(inference, single.eval()(images()))


def test_a_group_never_sees_the_others_and_the_loss_is_the_mean_over_groups():
    grouped = model(3)
    base = grouped(images())
    with torch.no_grad():
        grouped.group_query_embed.weight[TINY["num_queries"]:] += 1.0  # change the third group only
    moved = grouped(images())
    assert_same_outputs(moved, base)  # group 1
    assert_same_outputs(moved["groups"][0], base["groups"][0])  # group 2
    assert not torch.allclose(moved["groups"][1]["pred_boxes"], base["groups"][1]["pred_boxes"])
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=3)
    per_group = [criterion({k: v for k, v in g.items() if k != "groups"}, targets()) for g in [moved, *moved["groups"]]]
    mean = criterion(moved, targets())
    for k in mean:  # each group matched and trained on its own, the terms averaged
        assert torch.allclose(mean[k], sum(p[k] for p in per_group) / 3, rtol=1e-12, atol=0), k


def test_grouped_checkpoint_loads_into_the_plain_architecture_and_finetuning_copies_queries(tmp_path):
    from detr.checkpoint import save_checkpoint
    from detr.config import Config, ModelConfig
    from detr.inference.detector import Detector

    grouped = model(4).float().eval()
    cfg = Config(model=ModelConfig(num_classes=NUM_CLASSES, **{**TINY, "num_groups": 4}))
    path = tmp_path / "grouped.pth"
    save_checkpoint(path, {"model": grouped.state_dict(), "config": cfg.to_dict()})
    loaded = Detector.from_pretrained(path, size=64, max_size=96).model
    plain = detr.create_model("detr_r50", num_classes=NUM_CLASSES, **TINY).eval()
    assert loaded.state_dict().keys() == plain.state_dict().keys()  # no training-only parameters
    x = [im.float() for im in images()]
    with torch.no_grad():
        assert torch.equal(loaded(x)["pred_boxes"], grouped(x)["pred_boxes"])
    # fine-tuning a plain checkpoint with 3 groups: every extra group starts from its queries
    three = detr.create_model("detr_r50", num_classes=NUM_CLASSES, num_groups=3, **TINY)
    plain_path = tmp_path / "plain.pth"
    save_checkpoint(plain_path, {"model": plain.state_dict()})
    load_finetune_weights(three, str(plain_path))
    assert torch.equal(three.group_query_embed.weight, plain.query_embed.weight.repeat(2, 1))


def test_num_groups_zero_is_refused():
    from detr.config import Config, ModelConfig, validate_config

    with pytest.raises(ValueError, match="--num_groups must be >= 1"):
        validate_config(Config(model=ModelConfig(num_groups=0)))


# --- IoU-aware classification (varifocal) ---------------------------------------------------------

def test_varifocal_loss_is_the_formula():
    from detr.loss.varifocal import varifocal_loss

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    matched = (torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2]))
    labels, ious = torch.tensor([2, 0, 1]), torch.tensor([0.7, 0.0, 0.35], dtype=torch.float64)
    got = varifocal_loss(logits, matched, labels, ious, num_boxes=3.0, alpha=0.25, gamma=2.0)
    total = 0.0
    for b in range(2):
        for q in range(4):
            for c in range(3):
                x = logits[b, q, c].item()
                p = 1 / (1 + math.exp(-x))
                hit = [i for i in range(3) if (matched[0][i], matched[1][i], labels[i]) == (b, q, c)]
                t = ious[hit[0]].item() if hit else 0.0
                w = t if hit else 0.25 * p**2  # a matched (query, class) is weighted by its IoU target
                total += -w * (t * math.log(p) + (1 - t) * math.log(1 - p))
    assert got.item() == pytest.approx(total / 3.0, rel=1e-12)


def test_varifocal_negatives_are_torchvisions_sigmoid_focal_loss():
    """With no matched query every score is a negative; at alpha 0.5 the two losses coincide."""
    from torchvision.ops import sigmoid_focal_loss

    from detr.loss.varifocal import varifocal_loss

    logits = torch.randn(2, 5, 4, dtype=torch.float64)
    none = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    got = varifocal_loss(logits, none, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64),
                         num_boxes=2.0, alpha=0.5, gamma=2.0)
    expected = sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=0.5, gamma=2.0, reduction="sum") / 2.0
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_focal_matching_cost_is_the_formula():
    from detr.loss.varifocal import focal_cost

    logits = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([3, 0, 3])
    p = logits.sigmoid()[:, labels]
    expected = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p**2 * -torch.log(1 - p + 1e-8)
    assert torch.allclose(focal_cost(logits, labels), expected, rtol=1e-12, atol=0)


def test_varifocal_postprocess_is_a_brute_force_top_k():
    logits = torch.randn(2, 7, 3)
    boxes = torch.rand(2, 7, 4) * 0.5 + 0.25
    sizes = torch.tensor([[100, 200], [50, 60]])
    results = detr.postprocess({"pred_logits": logits, "pred_boxes": boxes}, sizes, class_loss="varifocal", top_k=5)
    for b, res in enumerate(results):
        pairs = sorted(((torch.sigmoid(logits[b, q, c]).item(), q, c) for q in range(7) for c in range(3)),
                       reverse=True)[:5]
        assert res["scores"].tolist() == pytest.approx([s for s, _, _ in pairs], abs=1e-7)
        assert res["queries"].tolist() == [q for _, q, _ in pairs] and res["labels"].tolist() == [c for *_, c in pairs]
        h, w = sizes[b].tolist()
        for (x0, y0, x1, y1), q in zip(res["boxes"].tolist(), res["queries"].tolist()):
            cx, cy, bw, bh = boxes[b, q].tolist()
            assert [x0, y0, x1, y1] == pytest.approx([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                                                      (cy + bh / 2) * h], abs=1e-4)


def test_varifocal_model_trains_and_every_consumer_reads_its_head(tmp_path):
    from detr.checkpoint import save_checkpoint
    from detr.config import Config, ModelConfig
    from detr.inference.detector import Detector

    torch.manual_seed(0)
    net = detr.create_model("detr_r50", num_classes=NUM_CLASSES, class_loss="varifocal", **TINY)
    assert net.class_embed.out_features == NUM_CLASSES  # no "no object" column
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=3, class_loss="varifocal")
    x = [im.float() for im in images()]
    t = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in targets()]
    losses = criterion(net.train()(x), t)
    assert {"loss_vfl", "loss_bbox", "loss_giou", "loss_vfl_0", "loss_vfl_1"} <= losses.keys()
    assert "loss_ce" not in losses
    criterion.total_loss(losses).backward()
    assert net.class_embed.weight.grad.abs().sum() > 0
    path = tmp_path / "vfl.pth"
    cfg = Config(model=ModelConfig(num_classes=NUM_CLASSES, class_loss="varifocal", **TINY))
    save_checkpoint(path, {"model": net.state_dict(), "config": cfg.to_dict()})
    detector = Detector.from_pretrained(path, threshold=0.0, size=64, max_size=96)
    picture = torch.rand(3, 70, 90)  # an image as a user gives it: float pixels in [0, 1]
    found = detector(picture)
    with torch.no_grad():
        logits = net.eval()([detector.preprocess(picture)])["pred_logits"][0]
    best = logits.sigmoid().flatten().topk(len(found)).values
    assert torch.allclose(found.scores, best, atol=1e-5)  # the sigmoid top-k, not a softmax over C+1
    assert found.queries.tolist() == (logits.sigmoid().flatten().topk(len(found)).indices // NUM_CLASSES).tolist()


def test_unknown_class_loss_is_refused():
    from detr.config import Config, ModelConfig, validate_config

    with pytest.raises(ValueError, match="--class_loss must be softmax or varifocal, got 'focal'"):
        validate_config(Config(model=ModelConfig(class_loss="focal")))
    with pytest.raises(ValueError, match="class_loss must be one of softmax, varifocal"):
        detr.create_criterion(5, class_loss="focal")
