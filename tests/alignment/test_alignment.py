"""Side by side with the official DETR code: same random weights, same inputs, fp32; the official code in
float64 is the truth that gradients are measured against."""

from __future__ import annotations

import copy

import pytest
import torch

import detr

from ..helpers import official

# (our model name, overrides): every option the core issue lists.
CASES = {
    "r50": ("detr_r50", {}),
    "r50_dc5": ("detr_r50_dc5", {}),
    "r101": ("detr_r101", {}),
    "pre_norm": ("detr_r50", {"pre_norm": True}),
    "learned_pos": ("detr_r50", {"position_embedding": "learned"}),
    "q10_c20": ("detr_r50", {"num_queries": 10, "num_classes": 20}),
}
# the cases of the training-step comparison (and of benchmarks/conditioning.py)
TRAINING_CASES = ["r50", "r50_dc5", "pre_norm", "learned_pos", "q10_c20"]
BACKBONES = {"detr_r50": ("resnet50", False), "detr_r50_dc5": ("resnet50", True),
             "detr_r101": ("resnet101", False), "detr_r101_dc5": ("resnet101", True)}


def make_pair(ref, name: str, overrides: dict, **extra):
    """The official model with random weights, and ours loaded from its state dict."""
    kw = {**overrides, **extra}
    backbone, dilation = BACKBONES[name]
    theirs = official.build_model(ref, backbone=backbone, dilation=dilation, **kw)
    num_classes = kw.pop("num_classes", 91)
    ours = detr.create_model(name, num_classes=num_classes, **kw)
    ours.load_state_dict(detr.convert_official_state_dict(theirs.state_dict()))
    return theirs, ours


def two_images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # different sizes, so the padding mask matters
    return [torch.randn(3, 160, 224, generator=g), torch.randn(3, 200, 136, generator=g)]


def random_targets(num_classes: int, counts=(3, 0), seed: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g),
                        "boxes": torch.cat([centre, size], dim=1)})
    return targets


def assert_outputs_close(a: dict, b: dict) -> None:
    assert (a["pred_logits"] - b["pred_logits"]).abs().max() <= 1e-4
    assert (a["pred_boxes"] - b["pred_boxes"]).abs().max() <= 1e-5
    assert len(a.get("aux_outputs", [])) == len(b.get("aux_outputs", []))
    for x, y in zip(a.get("aux_outputs", []), b.get("aux_outputs", [])):
        assert (x["pred_logits"] - y["pred_logits"]).abs().max() <= 1e-4
        assert (x["pred_boxes"] - y["pred_boxes"]).abs().max() <= 1e-5


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_official(ref, case):
    name, overrides = CASES[case]
    theirs, ours = make_pair(ref, name, overrides)
    images = two_images()
    with torch.no_grad():
        a = theirs.eval()(images)
        b = ours.eval()(images)
    assert b["pred_logits"].shape == a["pred_logits"].shape
    assert_outputs_close(a, b)


@pytest.mark.reference
def test_official_training_checkpoint_file_gives_the_official_outputs(ref, tmp_path):
    """A file saved as the official training loop saves it (DDP `module.` keys, `args` as a Namespace), here
    a DC5 model, goes through our file loader and `config_from_checkpoint` alone (no model options given) and
    gives the official model's outputs: the same keys, and dilation read from the args."""
    import argparse

    from detr.inference.detector import Detector

    options = {"enc_layers": 2, "dec_layers": 2, "num_queries": 10, "num_classes": 20}
    theirs = official.build_model(ref, backbone="resnet50", dilation=True, **options).eval()
    args = argparse.Namespace(backbone="resnet50", dilation=True, nheads=8, hidden_dim=256, position_embedding="sine",
                              enc_layers=2, dec_layers=2, dim_feedforward=2048, num_queries=10, pre_norm=False,
                              aux_loss=True, lr_backbone=1e-5, dropout=0.1, masks=False)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}, "args": args, "epoch": 3}, path)
    ours = Detector.from_pretrained(path).model
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    images = two_images()
    with torch.no_grad():
        assert_outputs_close(theirs(images), ours(images))


def to_float64(x):
    """Images (a list of tensors) or targets (a list of dicts) with every floating tensor in float64."""
    if isinstance(x, dict):
        return {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    return [to_float64(v) if isinstance(v, dict) else v.double() for v in x]


def official_gradients(ref, model: torch.nn.Module, num_classes: int, images, targets) -> dict[str, torch.Tensor]:
    """The official model's parameter gradients of its own weighted loss, computed in the model's dtype,
    returned in float64."""
    crit = official.build_criterion(ref, num_classes=num_classes).to(next(model.parameters()).dtype)
    losses = crit(model.train()(images), targets)
    sum(losses[k] * w for k, w in crit.weight_dict.items()).backward()
    return {k: p.grad.double() for k, p in model.named_parameters() if p.grad is not None}


def float64_gate(ours: torch.Tensor, official32: torch.Tensor, official64: torch.Tensor) -> tuple[float, str]:
    """The gradient gate for one parameter: (ratio, message); the gradient passes when ratio <= 1.

    ratio = ||ours - fp64|| / max(1e-4 ||fp64||, 2 ||official fp32 - fp64||): ours must be as close to
    the float64 truth as 1e-4 relative, or as twice the official fp32 gradient is. On random weights
    the official fp32 gradients are themselves up to 3.3e-3 from float64 (benchmarks/conditioning.py),
    so agreeing with their rounding proves nothing more. A gradient that is zero in both stays zero.
    """
    truth = official64.double()
    err, norm64 = (ours.double() - truth).norm().item(), truth.norm().item()
    err32 = (official32.double() - truth).norm().item()
    bound = max(1e-4 * norm64, 2 * err32)
    ratio = err / bound if bound > 0 else (0.0 if err == 0 else float("inf"))
    return ratio, (f"||ours - fp64|| = {err:.3e}, ||fp64|| = {norm64:.3e}, ||official fp32 - fp64|| = {err32:.3e}: "
                   f"{ratio:.2f}x the bound max(1e-4 ||fp64||, 2 ||official fp32 - fp64||)")


def test_float64_gate_on_written_numbers():
    g64 = torch.tensor([3.0, 4.0], dtype=torch.float64)  # norm 5
    off = torch.tensor([3.0, 4.001])  # official fp32 1e-3 off: bound 2e-3
    assert float64_gate(torch.tensor([3.0, 4.0015]), off, g64)[0] <= 1
    assert float64_gate(torch.tensor([3.0, 4.0025]), off, g64)[0] > 1
    assert float64_gate(torch.tensor([3.0, 3.9975]), off, g64)[0] > 1  # on the other side of the truth as well
    # official fp32 exact: 1e-4 relative (5e-4)
    assert float64_gate(torch.tensor([3.0, 4.00049], dtype=torch.float64), g64, g64)[0] <= 1
    assert float64_gate(torch.tensor([3.0, 4.00051], dtype=torch.float64), g64, g64)[0] > 1
    zero = torch.zeros(2)
    assert float64_gate(zero, zero, zero)[0] == 0 and float64_gate(zero + 1e-20, zero, zero)[0] > 1
    ratio, message = float64_gate(torch.tensor([3.0, 4.003]), off, g64)
    assert ratio == pytest.approx(1.5, rel=1e-3) and "||ours - fp64|| = 3.000e-03" in message, message


@pytest.mark.reference
@pytest.mark.parametrize("case", TRAINING_CASES)
def test_training_step_matches_official(ref, case, record_property):
    """dropout 0: same matching, every loss term, and every parameter's gradient as close to the official
    float64 gradient as the official fp32 one (`float64_gate`). Ours runs its default training path."""
    name, overrides = CASES[case]
    theirs, ours = make_pair(ref, name, overrides, dropout=0.0)
    theirs64 = copy.deepcopy(theirs).double()  # the same weights, before any step
    num_classes = overrides.get("num_classes", 91)
    targets = random_targets(num_classes)
    crit_theirs = official.build_criterion(ref, num_classes=num_classes)
    crit_ours = detr.create_criterion(num_classes=num_classes)
    images = two_images()

    out_a, out_b = theirs.train()(images), ours.train()(images)
    assert_outputs_close(out_a, out_b)
    for layer_a, layer_b in zip([out_a, *out_a["aux_outputs"]], [out_b, *out_b["aux_outputs"]]):
        for (qa, ta), (qb, tb) in zip(crit_theirs.matcher(layer_a, targets), crit_ours.matcher(layer_b, targets)):
            assert torch.equal(qa, qb) and torch.equal(ta, tb)

    la, lb = crit_theirs(out_a, targets), crit_ours(out_b, targets)
    assert set(la) == set(lb)
    for k in la:
        assert torch.allclose(lb[k], la[k], rtol=1e-5, atol=1e-6), (k, la[k], lb[k])
    assert crit_ours.weight_dict == {k: float(v) for k, v in crit_theirs.weight_dict.items()}

    sum(la[k] * w for k, w in crit_theirs.weight_dict.items()).backward()
    crit_ours.total_loss(lb).backward()
    grads32 = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    grads64 = official_gradients(ref, theirs64, num_classes, to_float64(images), to_float64(targets))
    grads = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert set(grads) == set(grads32) == set(grads64)
    failures, worst, worst_vs_fp32 = [], (0.0, ""), (0.0, "")
    for k, g in grads.items():
        ratio, message = float64_gate(g, grads32[k], grads64[k])
        worst = max(worst, (ratio, k))
        if ratio > 1:
            failures.append(f"{k}: {message}")
        if grads32[k].norm() > 0:  # report only: the old rule, 1e-4 relative to the official fp32 gradient
            worst_vs_fp32 = max(worst_vs_fp32, (((g - grads32[k]).norm() / grads32[k].norm()).item(), k))
    summary = (f"{case}: float64 gate, worst {worst[0]:.3f}x the bound ({worst[1]}); vs official fp32 "
               f"(report only, was 1e-4), worst {worst_vs_fp32[0]:.1e} relative ({worst_vs_fp32[1]})")
    record_property("gradients", summary)
    print(summary)
    assert not failures, f"{len(failures)} of {len(grads)} gradients fail the float64 gate:\n" + "\n".join(failures)
    assert len(grads) > 100


@pytest.mark.reference
def test_postprocess_matches_official(ref):
    theirs, ours = make_pair(ref, "detr_r50", {"num_classes": 20, "num_queries": 10})
    images = two_images()
    sizes = torch.tensor([[480, 640], [600, 410]])
    with torch.no_grad():
        a = ref.detr.PostProcess()(theirs.eval()(images), sizes)
        b = detr.postprocess(ours.eval()(images), sizes)
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        assert (x["scores"] - y["scores"]).abs().max() <= 1e-5
        assert (x["boxes"] - y["boxes"]).abs().max() <= 1e-4


def random_outputs(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pred_logits": torch.randn(3, 12, 8, generator=g),
            "pred_boxes": torch.rand(3, 12, 4, generator=g) * 0.5 + 0.1}


@pytest.mark.reference
def test_matcher_and_losses_match_official_on_random_outputs(ref):
    """Matcher/criterion alone (no model), many random cases including empty images."""
    crit_theirs = official.build_criterion(ref, num_classes=7, dec_layers=2)
    crit_ours = detr.create_criterion(num_classes=7, dec_layers=2)
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        out = {**random_outputs(g), "aux_outputs": [random_outputs(g)]}
        targets = random_targets(7, counts=(seed % 5, 0, 12), seed=seed)
        for (qa, ta), (qb, tb) in zip(crit_theirs.matcher(out, targets), crit_ours.matcher(out, targets)):
            assert torch.equal(qa, qb) and torch.equal(ta, tb)
        la, lb = crit_theirs(out, targets), crit_ours(out, targets)
        assert set(la) == set(lb)
        for k in la:
            assert torch.allclose(lb[k], la[k], rtol=1e-5, atol=1e-6), (seed, k)
