"""Conditional DETR side by side with transformers' ConditionalDetrForObjectDetection (5.24.0, random weights).

Both models get the same weights through `detr.convert_hf_state_dict`. transformers is a test dependency
(the `dev` extra): a missing install fails these tests rather than skipping them.
"""

from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

import detr

from ..helpers import hf_conditional as hf

CASES = {"r50": False, "r50_dc5": True}


def _criterion() -> detr.SetCriterion:
    return detr.create_criterion(hf.NUM_CLASSES, hf.DEC_LAYERS, aux_loss=True, class_loss="focal")


def _targets(seed: int = 2, counts=(3, 2)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        centre, size = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, hf.NUM_CLASSES, (n,), generator=g), "boxes": torch.cat([centre, size], 1)})
    return out


def _layers(out: dict) -> list[dict]:
    return [*out["aux_outputs"], {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}]


@pytest.mark.parametrize("case", CASES)
def test_eval_outputs_match_transformers(case):
    """Every decoder layer's logits within 1e-4 and boxes within 1e-5 on two images of different sizes."""
    theirs, ours = hf.make_pair(dc5=CASES[case])
    theirs.eval(), ours.eval()
    images = hf.two_images()
    with torch.no_grad():
        ref = hf.reference_outputs(theirs, images)
        got = ours(images)
        full = theirs(*hf.padded(images))  # the port's own forward gives the same last layer
    assert torch.allclose(full.logits, ref["pred_logits"], atol=1e-5)
    assert len(got["aux_outputs"]) == hf.DEC_LAYERS - 1
    for a, b in zip(_layers(got), _layers(ref)):
        assert (a["pred_logits"] - b["pred_logits"]).abs().max() <= 1e-4
        assert (a["pred_boxes"] - b["pred_boxes"]).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_training_step_matches_transformers(case):
    """Dropout 0, random targets: the same matches on every layer, every loss term within 1e-5 relative and every
    parameter gradient within 1e-4 relative to the tensor's largest reference gradient, or to 1% of the largest of
    all when that is smaller (float32's absolute error; e.g. the biases of keys get gradients that are 0 in exact
    arithmetic, softmax being shift-invariant, and the first layer's self-attention sees zero content)."""
    theirs, ours = hf.make_pair(dc5=CASES[case])
    theirs.train(), ours.train()
    images, targets = hf.two_images(), _targets()
    ref, got = hf.reference_outputs(theirs, images), ours(images)

    matcher = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    criterion = _criterion()
    for a, b in zip(_layers(got), _layers(ref)):
        theirs_idx = matcher({"logits": b["pred_logits"], "pred_boxes": b["pred_boxes"]}, labels)
        for (qa, ta), (qb, tb) in zip(criterion.matcher(a, targets), theirs_idx):
            assert torch.equal(qa, qb) and torch.equal(ta, tb)

    losses, ref_losses = criterion(got, targets), hf.reference_losses(theirs, ref, targets)
    assert set(ref_losses) <= set(losses)
    for k, v in ref_losses.items():
        assert torch.allclose(losses[k], v, rtol=1e-5, atol=1e-7), (k, losses[k].item(), v.item())

    criterion.total_loss(losses).backward()
    hf.official_total(ref_losses).backward()
    ref_grads = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    ref_grads, _ = detr.convert_hf_state_dict(ref_grads, theirs.config)
    own = {k: p.grad for k, p in ours.named_parameters() if p.requires_grad}
    assert set(own) == set(ref_grads)
    floor = 1e-2 * max(g.abs().max().item() for g in ref_grads.values())
    for k, g in own.items():
        bound = 1e-4 * max(ref_grads[k].abs().max().item(), floor)
        assert (g - ref_grads[k]).abs().max() <= bound, k


def test_transformers_aux_decoder_deviates_from_the_official_formula():
    """transformers' decoder with `auxiliary_loss=True` feeds each layer's LayerNorm'd output to the next layer
    (and to `query_scale`); the official one feeds the raw output. Official Atten4Vis/ConditionalDETR
    models/transformer.py, TransformerDecoder.forward: `output = layer(output, ...)` then
    `intermediate.append(self.norm(output))`. In float64, ours matches the port run without auxiliary_loss
    (the official chaining, layer outputs formed by `reference_outputs`) to 1e-8 (both compute sine encodings'
    frequencies in float32), and the port's
    auxiliary_loss path differs by far more."""
    theirs, ours = hf.make_pair(dtype=torch.float64)
    theirs.eval(), ours.eval()
    images = hf.two_images(dtype=torch.float64)
    with torch.no_grad():
        ref, got = hf.reference_outputs(theirs, images), ours(images)
        assert (got["aux_outputs"][0]["pred_logits"] - ref["aux_outputs"][0]["pred_logits"]).abs().max() < 1e-8
        assert (got["pred_boxes"] - ref["pred_boxes"]).abs().max() < 1e-8
        theirs.config.auxiliary_loss = True
        theirs.model.decoder.config.auxiliary_loss = True
        port = theirs(*hf.padded(images))
    assert (port.logits - got["pred_logits"]).abs().max() > 1e-3


def test_focal_loss_matches_a_float64_formula():
    """loss_ce = sum over queries and classes of alpha_t (1 - p_t)^gamma BCE / num_boxes (official normalisation:
    mean over queries x num_queries), computed here from the definition."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    matched, labels = (torch.tensor([0, 1, 1]), torch.tensor([3, 0, 6])), torch.tensor([4, 1, 1])
    from detr.loss.focal import sigmoid_focal_loss

    got = sigmoid_focal_loss(logits, matched, labels, num_boxes=3.0)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(2):
        for q in range(7):
            for c in range(5):
                y = float(any(mb == b and mq == q and lc == c for mb, mq, lc in zip(*matched, labels)))
                p = torch.sigmoid(logits[b, q, c])
                p_t = p if y else 1 - p
                alpha_t = 0.25 if y else 0.75
                total += -alpha_t * (1 - p_t) ** 2 * torch.log(p_t)
    assert torch.allclose(got, total / 3.0, rtol=1e-12)
