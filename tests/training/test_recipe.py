"""Fast-convergence options, each checked in float64 against a formula or the plain DETR it must reduce to."""

from __future__ import annotations

import math

import pytest
import torch

import detr
from detr.weights.finetune import load_finetune_weights

from ..helpers.train import float64_images as images

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 3,
        "dim_feedforward": 64, "num_queries": 6, "dropout": 0.0}
NUM_CLASSES = 5


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
    from detr.config import Config, ModelConfig
    from detr.validation import validate_config

    with pytest.raises(ValueError, match="--num_groups must be >= 1"):
        validate_config(Config(model=ModelConfig(num_groups=0)))


# --- IoU-aware classification (varifocal) ---------------------------------------------------------

def test_varifocal_loss_is_the_formula():
    from detr.loss.focal import varifocal_loss

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

    from detr.loss.focal import varifocal_loss

    logits = torch.randn(2, 5, 4, dtype=torch.float64)
    none = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    got = varifocal_loss(logits, none, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64),
                         num_boxes=2.0, alpha=0.5, gamma=2.0)
    expected = sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=0.5, gamma=2.0, reduction="sum") / 2.0
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_focal_matching_cost_is_the_formula():
    from detr.loss.focal import focal_cost

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
    from detr.config import Config, ModelConfig
    from detr.validation import validate_config

    with pytest.raises(ValueError, match="--class_loss must be one of softmax, varifocal, focal, mal, got 'sigmoid'"):
        validate_config(Config(model=ModelConfig(class_loss="sigmoid")))
    with pytest.raises(ValueError, match="class_loss must be one of softmax, varifocal, focal, mal"):
        detr.create_criterion(5, class_loss="sigmoid")


# --- denoising queries (DN-DETR) -----------------------------------------------------------------

def dn_model(**options) -> detr.DETR:
    torch.manual_seed(0)
    return detr.create_model("detr_r50", num_classes=NUM_CLASSES, **{**TINY, "dn_number": 2, **options}).double().train()


def test_zero_noise_gives_the_ground_truth_and_padding_is_marked():
    from detr.models.denoising import noise_targets

    t = targets()
    noised = noise_targets(t, groups=3, box_noise=0.0, label_noise=0.0, num_classes=NUM_CLASSES)
    assert noised.group_size == 3 and noised.labels.shape == (2, 9)
    for g in range(3):
        slots = slice(g * 3, g * 3 + 3)
        assert torch.equal(noised.noised_labels[0, slots], t[0]["labels"])
        assert torch.equal(noised.noised_boxes[0, slots], t[0]["boxes"].float())
        assert noised.valid[0, slots].all() and not noised.valid[1, slots].any()  # image 2 has no box
    noisy = noise_targets(t, groups=3, box_noise=0.4, label_noise=1.0, num_classes=NUM_CLASSES)
    moved = (noisy.noised_boxes[0] - noisy.boxes[0]).abs()
    wh = noisy.boxes[0, :, 2:]
    assert (moved[:, :2] <= 0.4 * wh / 2 + 1e-6).all() and (moved[:, 2:] <= 0.4 * wh + 1e-6).all()
    assert noisy.noised_boxes.min() >= 0 and noisy.noised_boxes.max() <= 1


def test_denoising_attention_mask_is_as_in_the_paper():
    from detr.models.denoising import denoising_attention_mask

    m = denoising_attention_mask(num_queries=2, groups=2, group_size=3, device=torch.device("cpu"))
    blocked = [[False] * 8 for _ in range(8)]
    for row in range(8):
        for col in range(8):
            if col >= 2 and (row < 2 or (row - 2) // 3 != (col - 2) // 3):
                blocked[row][col] = True  # object queries never see denoising ones; groups see only themselves
    assert m.tolist() == blocked


def test_denoising_inputs_never_reach_the_object_queries():
    net = dn_model()
    a = net(images(), targets=targets())
    moved = [dict(t) for t in targets()]
    moved[0]["boxes"] = moved[0]["boxes"] * 0.5 + 0.1
    moved[0]["labels"] = torch.tensor([0, 0, 2])
    torch.manual_seed(1)
    b = net(images(), targets=moved)
    assert_same_outputs({k: v for k, v in a.items() if k != "dn"}, {k: v for k, v in b.items() if k != "dn"})
    assert not torch.allclose(a["dn"]["pred_boxes"], b["dn"]["pred_boxes"])
    single = dn_model(dn_number=0)
    single.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("denoising.")})
    assert_same_outputs({k: v for k, v in a.items() if k != "dn"}, single(images()))  # as if there were none


@pytest.mark.parametrize("counts", [(3, 0), (0, 0), (1, 4)])
def test_denoising_losses_for_empty_and_uneven_images(counts):
    g = torch.Generator().manual_seed(8)
    t = [{"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
          "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.rand(n, 2, generator=g) * 0.2 + 0.1],
                             1).double()} for n in counts]
    net = dn_model(num_groups=2)
    out = net(images(), targets=t)
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=3, denoising=True)
    losses = criterion(out, t)
    names = {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_bbox_dn_1"}
    assert names <= losses.keys() and names <= criterion.weight_dict.keys()
    assert all(torch.isfinite(v) for v in losses.values())
    if sum(counts) == 0:
        assert losses["loss_bbox_dn"] == 0  # nothing to reconstruct: only "no object" on the padding slots
    criterion.total_loss(losses).backward()
    assert net.denoising.label_embed.weight.grad is not None


def test_a_training_step_trains_the_groups_and_the_denoising_queries():
    """Through the training engine (mixed-precision handling included), every recipe parameter learns."""
    from detr.training.engine import train_one_epoch

    net = dn_model(num_groups=2).float()
    x = [im.float() for im in images()]
    t = [{**d, "boxes": d["boxes"].float()} for d in targets()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    criterion = detr.create_criterion(NUM_CLASSES, dec_layers=3, denoising=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    train_one_epoch(net, criterion, [(x, t)], optimizer, torch.device("cpu"), epoch=0, progress=False)
    for name in ("group_query_embed.weight", "denoising.label_embed.weight", "denoising.box_embed.0.weight"):
        assert not torch.equal(net.state_dict()[name], before[name]), name


@pytest.mark.parametrize("option, value, message", [
    ("dn_number", -1, "--dn_number must be >= 0"), ("dn_box_noise", 1.5, "--dn_box_noise must be in"),
    ("dn_label_noise", -0.1, "--dn_label_noise must be in")])
def test_bad_denoising_options_are_refused(option, value, message):
    from detr.config import Config, ModelConfig
    from detr.validation import validate_config

    with pytest.raises(ValueError, match=message):
        validate_config(Config(model=ModelConfig(**{option: value})))


def test_recipe_fast_sets_its_options_and_refuses_a_contradiction():
    from detr.cli.flags import build_parser, config_from_args
    from detr.presets import RECIPES

    parse = lambda *argv: config_from_args(build_parser("t", "").parse_args(["--device", "cpu", *argv]))  # noqa: E731
    cfg = parse("--recipe", "fast", "--dn_box_noise", "0.2")
    assert cfg.train.recipe == "fast" and cfg.model.dn_box_noise == 0.2
    for name, value in RECIPES["fast"].items():
        section = cfg.loss if name.startswith("set_cost") else cfg.model
        assert getattr(section, name) == value, name
    assert parse("--recipe", "fast", "--num_groups", str(RECIPES["fast"]["num_groups"])).model.num_groups > 1
    with pytest.raises(ValueError, match="--recipe fast sets --num_groups 3; --num_groups 1 contradicts it"):
        parse("--recipe", "fast", "--num_groups", "1")
    with pytest.raises(ValueError, match="--recipe must be one of official, fast, got 'quick'"):
        parse("--recipe", "quick")
    assert parse().model.num_groups == 1 and parse().model.class_loss == "softmax"  # the default is the paper's
    # the weight average always; from a random backbone also the dense warm-up and a doubled rate
    scratch = parse("--recipe", "fast", "--backbone", "tiny")
    assert (scratch.train.backbone_warmup, scratch.train.lr, scratch.train.lr_backbone) == (250, 2e-4, 2e-4)
    assert scratch.train.ema_decay == 0.9995
    assert parse("--recipe", "fast", "--backbone_weights", "none").train.backbone_warmup == 250
    imagenet = parse("--recipe", "fast")
    assert (imagenet.train.backbone_warmup, imagenet.train.lr, imagenet.train.lr_backbone) == (0, 1e-4, 1e-5)
    assert imagenet.train.ema_decay == 0.9995 and parse().train.ema_decay == 0  # no average by default
    finetune = parse("--recipe", "fast", "--backbone", "tiny", "--weights", "w.pth")
    assert (finetune.train.backbone_warmup, finetune.train.lr, finetune.model.num_groups) == (0, 1e-4, 3)
    assert finetune.train.lr_backbone == 4e-4  # a trained detector: the backbone at 4x the transformer's rate
    assert parse("--recipe", "fast", "--weights", "w.pth", "--lr_backbone", "0").train.lr_backbone == 0
    tuned = parse("--recipe", "fast", "--backbone", "tiny", "--lr", "1e-3", "--backbone_warmup", "7",
                  "--ema_decay", "0")
    assert (tuned.train.backbone_warmup, tuned.train.lr, tuned.train.lr_backbone) == (7, 1e-3, 2e-4)  # flags win
    assert tuned.train.ema_decay == 0


def test_recipe_training_resumes_exactly_and_exports_to_onnx_with_parity(tmp_path):
    """--recipe fast end to end: two epochs in one go equal one epoch then --resume (the denoising noise
    follows the saved random state); the trained checkpoint is an ordinary model for ONNX."""
    from detr.checkpoint import load_checkpoint
    from detr.inference.detector import Detector
    from detr.inference.export import export_onnx, onnx_outputs
    from detr.training.train import train

    from ..helpers.train import config, max_weight_diff, tiny_data

    data = tiny_data(tmp_path / "data", num_train=4, num_val=2)
    fast = ["--recipe", "fast", "--num_queries", "8", "--class_loss", "varifocal", "--dn_number", "2",  # all options
            "--backbone_warmup", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(data, straight, [*fast, "--epochs", "2"]), progress=False)
    train(config(data, split, [*fast, "--epochs", "1"]), progress=False)
    train(config(data, split, [*fast, "--epochs", "2", "--resume", str(split / "checkpoint.pth")]), progress=False)
    a, b = load_checkpoint(straight / "checkpoint.pth"), load_checkpoint(split / "checkpoint.pth")
    assert {"group_query_embed.weight", "denoising.label_embed.weight"} <= a["model"].keys()  # kept for --resume
    assert max_weight_diff(a["model"], b["model"]) <= 1e-6
    assert max_weight_diff(a["training_model"], b["training_model"]) <= 1e-6  # the recipe's weight average is on
    assert a["ema_updates"] == b["ema_updates"] == 4
    model = Detector.from_pretrained(straight / "checkpoint.pth").model
    assert not any(k.startswith(("group_query_embed.", "denoising.")) for k in model.state_dict())
    path = export_onnx(model, tmp_path / "fast.onnx", height=64, width=96)
    for size in [(64, 96), (80, 72)]:
        x = torch.randn(2, 3, *size)
        logits, boxes = onnx_outputs(path, x)
        with torch.no_grad():
            expected = model(x)
        assert (logits - expected["pred_logits"]).abs().max() <= 1e-4
        assert (boxes - expected["pred_boxes"]).abs().max() <= 1e-4
