"""Plain DETR's BoxRPB: the bias against the formula written out in float64, its gradient through the exact
attention path, the model it goes into, and its refusal for Conditional DETR."""

from __future__ import annotations

import itertools

import pytest
import torch

import detr
from detr.models.box_rpb import BoxRPB, valid_cells

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 3,
        "dim_feedforward": 64, "num_queries": 5, "dropout": 0.0}


def mlp(layers: torch.nn.Sequential, x: list[float]) -> list[float]:
    """Linear(2, n) -> ReLU -> Linear(n, heads, no bias), one input, written out in float64."""
    w1, b1, w2 = (p.detach().double().tolist() for p in (layers[0].weight, layers[0].bias, layers[2].weight))
    hidden = [max(0.0, sum(w * v for w, v in zip(row, x)) + b) for row, b in zip(w1, b1)]
    return [sum(w * h for w, h in zip(row, hidden)) for row in w2]


def test_bias_is_plain_detrs_formula():
    torch.manual_seed(0)
    rpb = BoxRPB(heads=3, stride=32, hidden=8).double()
    boxes = torch.tensor([[[0.5, 0.4, 0.3, 0.2], [0.2, 0.7, 0.1, 0.5]],
                          [[0.6, 0.5, 0.8, 0.9], [0.3, 0.3, 0.2, 0.2]]], dtype=torch.float64)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2:, :] = True  # image 1 has 2 of the 3 rows and 3 of the 4 columns
    mask[1, :, 3:] = True
    valid = valid_cells(mask)
    assert valid.tolist() == [[3, 4], [2, 3]]
    got = rpb(boxes, valid, (3, 4))
    assert got.shape == (2, 3, 2, 12)
    for b, q in itertools.product(range(2), range(2)):
        cx, cy, w, h = boxes[b, q].tolist()
        rows, cols = valid[b].tolist()
        x0, x1 = (cx - w / 2) * cols * 32, (cx + w / 2) * cols * 32  # corners in pixels of the input
        y0, y1 = (cy - h / 2) * rows * 32, (cy + h / 2) * rows * 32
        for i, j in itertools.product(range(3), range(4)):
            px, py = (j + 0.5) * 32, (i + 0.5) * 32  # the cell's centre
            bx, by = mlp(rpb.mlp_x, [x0 - px, x1 - px]), mlp(rpb.mlp_y, [y0 - py, y1 - py])
            expected = torch.tensor([u + v for u, v in zip(bx, by)], dtype=torch.float64)
            assert torch.allclose(got[b, :, q, i * 4 + j], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [64, 2])
def test_the_exact_attention_path_gives_the_bias_its_gradient(chunk):
    """The chunked exact path (training) against autograd of softmax(q k^T / sqrt(d) + bias + mask) v."""
    from detr.models.attention import Attention

    torch.manual_seed(1)
    attn = Attention(8, 2, dropout=0.0, chunk_size=chunk).double().train()
    q, kv = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 7, 8, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    bias = torch.randn(2, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    out = attn(q, kv, kv, pad, bias=bias)
    grad_bias, = torch.autograd.grad(out.square().sum(), bias)
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    heads = [(x @ w.T + b).unflatten(-1, (2, 4)).transpose(1, 2) for x, w, b in ((q, w_q, b_q), (kv, w_k, b_k),
                                                                                    (kv, w_v, b_v))]
    ref_bias = bias.detach().clone().requires_grad_()
    scores = heads[0] @ heads[1].transpose(-2, -1) / 2.0 + ref_bias  # d = 4: scale 1/2
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    ref = attn.out_proj((scores.softmax(-1) @ heads[2]).transpose(1, 2).flatten(2))
    ref_grad, = torch.autograd.grad(ref.square().sum(), ref_bias)
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(grad_bias, ref_grad, atol=1e-10)
    assert grad_bias[1, :, :, 5:].abs().max() == 0  # padding: no gradient


def rpb_model() -> detr.DETR:
    torch.manual_seed(0)
    return detr.create_model("detr_r50", num_classes=3, box_rpb=True, **TINY).double()


def test_box_rpb_model_biases_every_layer_after_the_first():
    model = rpb_model()
    layers = model.transformer.decoder.layers
    assert layers[0].box_rpb is None and all(layer.box_rpb is not None for layer in layers[1:])
    images = [torch.randn(3, 64, 96, dtype=torch.float64), torch.randn(3, 80, 48, dtype=torch.float64)]
    out = model.train()(images)
    loss = out["pred_boxes"].sum() + sum(a["pred_boxes"].sum() for a in out["aux_outputs"])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[1].box_rpb.parameters())
    with torch.no_grad():  # the bias changes the outputs of the layers it is in, not those before
        plain = model.eval()(images)
        for layer in layers[1:]:
            layer.box_rpb.mlp_x[2].weight.zero_()
            layer.box_rpb.mlp_y[2].weight.zero_()
        zeroed = model(images)
    assert torch.equal(plain["aux_outputs"][0]["pred_boxes"], zeroed["aux_outputs"][0]["pred_boxes"])
    assert not torch.allclose(plain["pred_boxes"], zeroed["pred_boxes"])
    state = {k: v for k, v in model.state_dict().items() if "box_rpb" not in k}
    torch.manual_seed(0)
    reference = detr.create_model("detr_r50", num_classes=3, **TINY).double().eval()
    reference.load_state_dict(state)  # a zero bias is plain DETR
    with torch.no_grad():
        assert torch.allclose(reference(images)["pred_boxes"], zeroed["pred_boxes"], atol=1e-12)


def test_box_rpb_is_refused_for_conditional_detr():
    from detr.config import Config, ModelConfig, TrainConfig
    from detr.validation import validate_config

    with pytest.raises(ValueError, match="BoxRPB is for plain DETR"):
        detr.create_model("conditional_detr_r50", box_rpb=True, **TINY)
    with pytest.raises(ValueError, match="--box_rpb is for plain DETR, not conditional_detr"):
        validate_config(Config(model=ModelConfig(family="conditional_detr", box_rpb=True),
                               train=TrainConfig(device="cpu")))


def test_plain_detr_weights_fine_tune_a_box_rpb_model():
    """--weights of a plain DETR (e.g. COCO's) into a --box_rpb model: everything loads but the new bias MLPs."""
    from detr.weights.finetune import load_finetune_weights

    torch.manual_seed(1)
    plain = detr.create_model("detr_r50", num_classes=3, **TINY)
    model = rpb_model().float()
    before = {k: v.clone() for k, v in model.state_dict().items() if "box_rpb" in k}
    load_finetune_weights(model, plain.state_dict())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in plain.state_dict().items())
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_box_rpb_runs_with_query_groups_and_denoising_and_is_not_a_transformers_model():
    from detr.config import ModelConfig
    from detr.weights.to_hf import check_hf_exportable

    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=3, box_rpb=True, num_groups=2, dn_number=2,
                              **TINY).double().train()
    t = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]], dtype=torch.float64)}] * 2
    out = model([torch.randn(3, 64, 96, dtype=torch.float64), torch.randn(3, 80, 48, dtype=torch.float64)], targets=t)
    assert len(out["groups"]) == 1 and out["dn"]["pred_boxes"].shape[:2] == (2, 2)
    with pytest.raises(ValueError, match="box_rpb: transformers' DETR has no box-to-pixel attention bias"):
        check_hf_exportable(ModelConfig(box_rpb=True))
