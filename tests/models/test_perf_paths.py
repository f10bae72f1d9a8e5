"""The speed-up paths compute what the plain ones do: chunked exact attention, folded BatchNorm, bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

import detr
from detr.models import attention
from detr.models import dropout as dropout_ops
from detr.models.attention import Attention, ExactAttention
from detr.models.backbone import Backbone
from detr.models.transformer import ReluDropout

TINY = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 4, "enc_layers": 2, "dec_layers": 2,
        "dim_feedforward": 64, "num_queries": 7, "num_classes": 5}


def qkv_bias(b=2, h=3, length=13, keys=17, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype, requires_grad=True) for n in (length, keys, keys))
    pad = torch.zeros(b, keys, dtype=torch.bool)
    pad[1, -5:] = True  # the second item has 5 padded keys
    bias = torch.zeros(b, 1, 1, keys, dtype=dtype).masked_fill(pad[:, None, None, :], float("-inf"))
    return q, k, v, bias


def reference(q, k, v, bias, dropped, p):
    """Unchunked attention in the official order of operations, differentiated by autograd."""
    w = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    if p > 0:
        w = w.masked_fill(dropped, 0.0) * (1.0 / (1.0 - dropout_ops.drop_probability(p)))
    return w @ v


def grads(out, *inputs, seed=3):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("chunk", [4, 13, 100])
def test_chunked_exact_attention_matches_unchunked_autograd_with_the_same_mask(monkeypatch, p, chunk):
    q, k, v, bias = qkv_bias()
    full = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(1)) < p  # the mask both use
    rows = {}  # seed -> the rows of `full` handed out for it, in forward's order

    def replay(shape, p_, device, seed):  # the same seed (forward, then backward) gets the same rows
        assert p_ == p
        if seed not in rows:
            start = sum(r.stop - r.start for r in rows.values())
            rows[seed] = range(start, start + shape[2])
        return full[:, :, rows[seed].start: rows[seed].stop].clone()

    monkeypatch.setattr(attention, "drop_mask", replay)
    ours = ExactAttention.apply(q, k, v, bias, p, chunk)
    assert sum(len(r) for r in rows.values()) == (13 if p > 0 else 0)
    theirs = reference(q, k, v, bias, full, p)
    assert (ours - theirs).abs().max() <= 1e-12
    for a, b in zip(grads(ours, q, k, v), grads(theirs, q, k, v)):
        assert (a - b).abs().max() <= 1e-12


def test_chunking_does_not_change_fp32_results():
    q, k, v, bias = (t.detach().float().requires_grad_(t.requires_grad) for t in qkv_bias())
    whole = ExactAttention.apply(q, k, v, bias, 0.0, 1000)
    chunked = ExactAttention.apply(q, k, v, bias, 0.0, 3)
    assert (whole - chunked).abs().max() <= 1e-6
    for a, b in zip(grads(whole, q, k, v), grads(chunked, q, k, v)):
        assert (a - b).abs().max() <= 1e-6


def test_dropout_mask_rate_and_kept_scale():
    assert dropout_ops.drop_probability(0.1) == 3277 / 2**15  # 0.1 to 15 bits, written out
    assert dropout_ops.kept_scale(0.1) == 2**15 / (2**15 - 3277)
    mask = dropout_ops.drop_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"), seed=5)
    assert abs(mask.float().mean().item() - 0.1) < 2e-3
    assert torch.equal(mask, dropout_ops.drop_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"), seed=5))
    for shape in ([3, 5, 7], [2, 0, 4], [1]):  # sizes that are not a multiple of the 4 draws per word
        assert dropout_ops.drop_mask(torch.Size(shape), 0.5, torch.device("cpu")).shape == torch.Size(shape)
    assert dropout_ops.drop_mask(torch.Size([4001]), 1.0, torch.device("cpu")).all()
    assert not dropout_ops.drop_mask(torch.Size([4001]), 0.0, torch.device("cpu")).any()
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 1, 2000, 1, generator=g), torch.randn(1, 1, 4000, 1, generator=g), torch.ones(1, 1, 4000, 1)
    # with v = 1, each output is (sum of kept weights) / (1 - p), whose expectation is 1
    out = ExactAttention.apply(q, k, v, None, 0.5, 512)
    assert abs(out.mean().item() - 1.0) < 0.01


def test_attention_paths_agree():
    """Fused (eval and fused training) and exact (training, chunked) paths: one function."""
    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.0, chunk_size=5).double()
    x, mem = torch.randn(2, 11, 32, dtype=torch.float64), torch.randn(2, 9, 32, dtype=torch.float64)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, -3:] = True
    fused = attn.eval()(x, mem, mem, pad)
    exact = attn.train()(x, mem, mem, pad)
    attn.fused_training = True
    fused_train = attn(x, mem, mem, pad)
    assert (fused - exact).abs().max() <= 1e-12
    assert (fused_train - exact).abs().max() <= 1e-12
    weights = attn.attention_weights(x, mem, pad)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 11, dtype=torch.float64))
    assert (weights[0, :, -3:] == 0).all()


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    backbone = Backbone("resnet18", dilation=False)
    for m in backbone.modules():  # non-trivial frozen statistics, so folding has something to fold
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0)
    return backbone


def test_folded_backbone_matches_unfolded_and_keeps_its_state_dict():
    backbone = tiny_backbone().eval()
    images, mask = torch.randn(2, 3, 96, 128), torch.zeros(2, 96, 128, dtype=torch.bool)
    keys = list(backbone.state_dict())
    with torch.no_grad():
        expected = backbone.body.double()(images.double())["0"]  # unfolded, in float64
        backbone.float()
        feats, _ = backbone(images, mask)
    assert backbone._folded is not None  # the folded path ran
    assert feats.is_contiguous(memory_format=torch.channels_last)
    assert (feats - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert list(backbone.state_dict()) == keys


def test_folded_backbone_follows_weight_changes():
    backbone = tiny_backbone().eval()
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        before = backbone(images, mask)[0]
        other = tiny_backbone()
        other.body.layer4[1].bn2.weight.mul_(3.0)
        backbone.load_state_dict(other.state_dict())  # in place: must invalidate the folded copy
        after = backbone(images, mask)[0]
        expected = backbone.body(images)["0"]
    assert (after - before).abs().max() > 1e-3
    assert (after - expected).abs().max() <= 1e-4 * expected.abs().max()
    backbone.train()
    assert backbone._folded is None


def test_eval_with_gradients_uses_the_unfolded_trunk():
    backbone = tiny_backbone().eval()
    feats, _ = backbone(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    feats.sum().backward()
    assert backbone.body.layer4[0].conv1.weight.grad is not None
    assert backbone._folded is None


def test_tiny_detr_bf16_inference_and_training_run():
    model = detr.create_model("detr_r50", **TINY)
    images = [torch.randn(3, 96, 128), torch.randn(3, 80, 112)]
    with torch.inference_mode():
        fp32 = model.eval()(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images)
    assert (low["pred_boxes"].float() - fp32["pred_boxes"]).abs().max() < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(images)  # exact attention with dropout, in bf16
        loss = out["pred_logits"].float().logsumexp(-1).mean() + out["pred_boxes"].float().sum()
    loss.backward()
    grad = model.transformer.encoder.layers[0].self_attn.in_proj_weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_exact_attention_under_autocast_keeps_an_fp32_softmax():
    q, k, v, bias = (t.detach().to(torch.bfloat16) for t in qkv_bias())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ExactAttention.apply(q, k, v, bias, 0.0, 5)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double())
    assert out.dtype == torch.bfloat16
    assert (out.double() - expected).abs().max() < 0.05


def masked_reference(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Dropout written out: the mask `drop_mask` draws from the global RNG after `manual_seed(seed)`."""
    torch.manual_seed(seed)
    if p == 0:
        return x
    return x.masked_fill(dropout_ops.drop_mask(x.shape, p, x.device), 0.0) * dropout_ops.kept_scale(p)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_relu_dropout_matches_relu_then_masked_dropout_under_autograd(p):
    x = torch.randn(3, 50, 64, requires_grad=True)
    g = torch.randn(3, 50, 64)
    theirs = masked_reference(F.relu(x), p, seed=7)
    (grad_theirs,) = torch.autograd.grad(theirs, x, g)
    torch.manual_seed(7)
    ours = ReluDropout.apply(x, p)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    assert torch.equal(ours, theirs)
    assert torch.equal(grad_ours, grad_theirs)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_module_drops_at_rate_p_and_keeps_the_expectation(p):
    layer = dropout_ops.Dropout(p)
    x = torch.randn(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    out = layer.train()(x)
    assert torch.equal(out, masked_reference(x, p, seed=3))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 3e-3
    ones = layer(torch.ones(1000, 1000))
    assert abs(ones.mean().item() - 1.0) < 5e-3  # kept values are scaled by 1 / (1 - rate)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, (out != 0).float() * dropout_ops.kept_scale(p))
    assert layer.eval()(x) is x


def test_recomputed_feed_forward_gives_bit_identical_gradients(monkeypatch):
    from detr.models import transformer

    model = detr.create_model("detr_r50", **{**TINY, "dropout": 0.2}).train()
    images = [torch.randn(3, 96, 128)]
    results = []
    for threshold in (2**62, 0):  # never recompute, always recompute
        monkeypatch.setattr(transformer, "RECOMPUTE_FFN_ELEMENTS", threshold)
        model.zero_grad()
        torch.manual_seed(11)
        out = model(images)
        (out["pred_logits"].logsumexp(-1).sum() + out["pred_boxes"].sum()).backward()
        results.append((out["pred_boxes"].detach(), [p.grad.clone() for p in model.transformer.parameters()]))
    (boxes_a, grads_a), (boxes_b, grads_b) = results
    assert torch.equal(boxes_a, boxes_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_half_precision_training_on_cpu_takes_the_exact_path(monkeypatch):
    """CPU's fused kernel back-propagates bf16 ~5x slower than the exact path (BENCHMARKS.md, "Demos"), so
    fused training takes the exact path there; its output and gradients follow the float64 formula."""
    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.0, fused_training=True).train()
    reference_attn = Attention(32, 4).double()
    reference_attn.load_state_dict(attn.state_dict())
    x = torch.randn(2, 11, 32, requires_grad=True)
    mem = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, -3:] = True
    fused_calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: fused_calls.append(1) or real(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, mem, mem, pad)
    assert not fused_calls and out.dtype == torch.bfloat16
    attn(x, mem, mem, pad)
    assert len(fused_calls) == 1  # fp32 keeps the fused kernel
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out.float(), x, g)
    x64 = x.detach().double().requires_grad_()
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((x64, mem.double(), mem.double()),
                                                    reference_attn.in_proj_weight.chunk(3), reference_attn.in_proj_bias.chunk(3)))
    heads = [t.unflatten(-1, (4, 8)).transpose(1, 2) for t in (q, k, v)]  # [B, h, L|S, 8]
    bias = torch.zeros(2, 1, 1, 9, dtype=torch.float64).masked_fill(pad[:, None, None, :], float("-inf"))
    expected = reference_attn.out_proj(reference(*heads, bias, None, 0.0).transpose(1, 2).flatten(2))
    (expected_grad,) = torch.autograd.grad(expected, x64, g.double())
    assert (out.double() - expected).abs().max() < 0.03 * expected.abs().max()
    assert (grad.double() - expected_grad).abs().max() < 0.03 * expected_grad.abs().max()
