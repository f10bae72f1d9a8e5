"""Multi-head attention with the parameter layout of `nn.MultiheadAttention`.

Three code paths compute the same function:
- fused: `scaled_dot_product_attention`, which never materialises the weights. Used in
  eval mode, and in training when `fused_training` is set and there is no dropout on
  the weights (except in half precision on a CPU, where it trains slower than the exact
  path). It rounds differently from the official code: on the alignment test's
  learned-position case, three gradients are up to 3.0x beyond the test's float64 gate
  (within max(1e-4, twice the official fp32 error) of the official float64 gradients;
  `benchmarks/conditioning.py`), so training uses it only on request;
- exact: explicit scale, softmax, dropout and matmul in the official order of operations
  (with it, the model's gradients are within ~1e-5 of the official fp32 ones and at most
  0.50x the float64 gate's bound), computed in chunks of queries by `ExactAttention`, whose
  backward recomputes each chunk's softmax instead of keeping the L x S weights: memory
  grows with chunk x keys, not queries x keys. Each chunk's dropout mask is drawn from its
  own generator seeded from the global RNG, and drawn again from the same seed in backward,
  so the gradient is that of the forward that was computed (15-bit integer draws: see
  `dropout.py`);
- explicit: the exact path's formula in one piece, for ONNX export (`explicit = True`, set by
  `detr.inference.export`): the TorchScript exporter translates the fused kernel on these
  transposed heads into a wrong graph (errors ~0.3 in torch 2.14), this form exports exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import drop_mask, kept_scale

# Attention of at most KEEP_WEIGHTS weights (32 MiB in fp32; R50's encoder at 800 px) runs as one
# chunk whose weights are kept for backward. Larger attention (DC5: 112M weights) runs in chunks of
# at most MAX_CHUNK_WEIGHTS (8 MiB): larger chunks grow glibc's heap with freed-but-kept memory at no
# gain in speed (BENCHMARKS.md, "What is on by default").
KEEP_WEIGHTS = 2**23
MAX_CHUNK_WEIGHTS = 2**21


class HeadAttention(nn.Module):
    """The attention core shared by `Attention` and `ProjectedAttention`: per-head inputs -> [B, L, E_v].

    Args:
        num_heads: heads.
        dropout: dropout on the attention weights during training.
        chunk_size: queries per chunk on the exact path, at most; chunks also hold at most
            `MAX_CHUNK_WEIGHTS` attention weights (batch x heads x queries x keys), unless the
            whole attention fits in `KEEP_WEIGHTS`.
        fused_training: use the fused kernel in training too when dropout is 0 (not in half precision on a
            CPU: `_slow_fused_backward`).

    Attributes:
        explicit: compute inference as matmul + softmax instead of the fused kernel (ONNX export).
    """

    explicit = False

    def __init__(self, num_heads: int, dropout: float = 0.0, chunk_size: int = 1024, fused_training: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.chunk_size = chunk_size
        self.fused_training = fused_training

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                attn_mask: Tensor | None, bias: Tensor | None = None) -> Tensor:
        """q [B, h, L, d], k [B, h, S, d], v [B, h, S, d_v] -> [B, L, h * d_v] (heads concatenated); `bias`
        [B, h, L, S]: added to the scaled logits (BoxRPB), with its gradient."""
        keep = _keep(key_padding_mask, attn_mask)  # [B|1, 1, 1|L, S] or None
        additive = _additive_mask(keep, q.dtype)
        if bias is not None:
            additive = bias if additive is None else bias + additive  # [B, h, L, S]
        p = self.dropout if self.training else 0.0
        if self.explicit and not self.training:
            out = _softmax(q * (q.shape[-1] ** -0.5), k, additive) @ v
        elif not self.training or (p == 0.0 and self.fused_training and not _slow_fused_backward(q)):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep if bias is None else additive)
        else:
            per_row = q.shape[0] * q.shape[1] * k.shape[2]
            budget = KEEP_WEIGHTS if per_row * q.shape[2] <= KEEP_WEIGHTS else MAX_CHUNK_WEIGHTS
            rows = min(self.chunk_size, max(1, budget // per_row))
            out = ExactAttention.apply(q, k, v, additive, p, rows)
        return out.transpose(1, 2).flatten(2)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, h * d] -> [B, h, L, d]."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    @staticmethod
    @torch.no_grad()
    def _mean_weights(q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """Head-averaged softmax(q k^T / sqrt(d)) [B, L, S] of per-head q [B, h, L, d], k [B, h, S, d]."""
        bias = _additive_mask(None if key_padding_mask is None else ~key_padding_mask[:, None, None, :], q.dtype)
        return _softmax(q * (q.shape[-1] ** -0.5), k, bias).mean(1)


class Attention(HeadAttention):
    """Batch-first multi-head attention with the parameter layout of `nn.MultiheadAttention`.

    Args:
        embed_dim: model width E.
        num_heads, dropout, chunk_size, fused_training: as `HeadAttention`'s.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, chunk_size: int = 1024,
                 fused_training: bool = False):
        if embed_dim % num_heads:
            raise ValueError(f"hidden_dim ({embed_dim}) must be divisible by nheads ({num_heads})")
        super().__init__(num_heads, dropout, chunk_size, fused_training)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L|S, E] inputs -> per-head q [B, h, L, d], k and v [B, h, S, d]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        heads = [self._heads(F.linear(x, w, b)) for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))]
        return heads[0], heads[1], heads[2]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """query [B, L, E], key/value [B, S, E] -> [B, L, E].

        key_padding_mask [B, S] and attn_mask [L, S] (bool, True = may not attend) hide keys; every
        query must keep at least one key. bias [B, h, L, S]: added to the attention logits.
        """
        q, k, v = self._project(query, key, value)
        return self.out_proj(self._attend(q, k, v, key_padding_mask, attn_mask, bias))

    @torch.no_grad()
    def attention_weights(self, query: Tensor, key: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Head-averaged attention weights [B, L, S] (for pictures; no dropout)."""
        q, k, _ = self._project(query, key, key)
        return self._mean_weights(q, k, key_padding_mask)


class ProjectedAttention(HeadAttention):
    """Multi-head attention over inputs that are already projected: only the output projection is learned.

    Conditional DETR's decoder projects queries, keys and values itself (its content and spatial
    parts separately) and concatenates them per head, so queries and keys may be wider than values:
    query [B, L, D_qk], key [B, S, D_qk], value [B, S, E] with h heads of D_qk / h and E / h channels.
    The parameter layout is the official Conditional DETR `MultiheadAttention`'s (only `out_proj`).
    """

    def __init__(self, value_dim: int, num_heads: int, dropout: float = 0.0, chunk_size: int = 1024,
                 fused_training: bool = False):
        if value_dim % num_heads:
            raise ValueError(f"hidden_dim ({value_dim}) must be divisible by nheads ({num_heads})")
        super().__init__(num_heads, dropout, chunk_size, fused_training)
        self.out_proj = nn.Linear(value_dim, value_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """query [B, L, D_qk], key [B, S, D_qk], value [B, S, E] -> [B, L, E] (masks as `Attention`'s)."""
        out = self._attend(self._heads(query), self._heads(key), self._heads(value), key_padding_mask, attn_mask)
        return self.out_proj(out)

    @torch.no_grad()
    def attention_weights(self, query: Tensor, key: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Head-averaged attention weights [B, L, S] (for pictures; no dropout)."""
        return self._mean_weights(self._heads(query), self._heads(key), key_padding_mask)


def _slow_fused_backward(q: Tensor) -> bool:
    """Whether the fused kernel trains slower than the exact path: on CPU in half precision its backward takes
    ~5x as long on DETR's shapes (BENCHMARKS.md, "Demos"), while in fp32 it is the faster one."""
    return q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16)


def _keep(key_padding_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
    """Which keys each query may see, broadcastable to [B, h, L, S] (True = attend), or None for all."""
    keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if attn_mask is not None:
        allowed = ~attn_mask[None, None]  # [1, 1, L, S]
        keep = allowed if keep is None else keep & allowed  # [B|1, 1, L, S]
    return keep


def _additive_mask(keep: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))


def _row_chunks(bias: Tensor | None, chunk_size: int) -> Iterator[Tensor | None]:
    """The additive mask of each chunk of queries: the same one when it does not vary by query."""
    if bias is None or bias.shape[2] == 1:
        return itertools.repeat(bias)
    return iter(bias.split(chunk_size, dim=2))


def _softmax(q_scaled: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q_scaled k^T + bias) [B, h, L, S], the softmax in fp32 for half-precision inputs (as autocast)."""
    scores = q_scaled @ k.transpose(-2, -1)
    if bias is not None:
        scores += bias  # in place: scores is the fresh matmul output
    if scores.dtype in (torch.float16, torch.bfloat16):
        return scores.softmax(-1, dtype=torch.float32).to(scores.dtype)
    return scores.softmax(-1)


class ExactAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + bias) with dropout p on the weights, times v, in chunks of queries.

    q [B, h, L, d]; k, v [B, h, S, d]; bias [B|1, 1|h, 1|L, S] additive (0 or -inf, plus BoxRPB's learned bias,
    which gets its gradient: that of the logits, summed over its broadcast axes) or None -> [B, h, L, d].
    Forward keeps q, k, v and one seed; backward recomputes each chunk's weights (one matmul,
    a softmax and the dropout mask) and applies the chain rule of the official order of operations.
    When the queries fit in one chunk, forward keeps the weights and mask instead (no recompute).
    Inputs must share one dtype (autocast is switched off inside: half precision keeps an fp32 softmax).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float,  # type: ignore[override]
                chunk_size: int) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            q_scaled = q * (q.shape[-1] ** -0.5)
            seed = int(torch.randint(2**62, ())) if p > 0 else 0  # from the global RNG: reproducible
            outs, ctx.kept = [], None
            for i, (q_c, b_c) in enumerate(zip(q_scaled.split(chunk_size, dim=2), _row_chunks(bias, chunk_size))):
                weights = _softmax(q_c, k, b_c)  # [B, h, l, S]
                if p > 0:
                    mask = drop_mask(weights.shape, p, weights.device, seed + i)
                    if q.shape[2] <= chunk_size:  # one chunk: small enough to keep for backward
                        ctx.kept = (weights, mask)
                        weights = weights.masked_fill(mask, 0.0)
                    else:
                        weights = weights.masked_fill_(mask, 0.0)
                    weights = weights.mul_(kept_scale(p))
                elif q.shape[2] <= chunk_size:
                    ctx.kept = (weights, None)
                outs.append(weights @ v)
        ctx.save_for_backward(q_scaled, k, v, bias)
        ctx.seed, ctx.p, ctx.chunk_size = seed, p, chunk_size
        return torch.cat(outs, dim=2)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q_scaled, k, v, bias = ctx.saved_tensors
        p, scale = ctx.p, q_scaled.shape[-1] ** -0.5
        grad_q, grad_k, grad_v, grad_b = [], torch.zeros_like(k), torch.zeros_like(v), []
        with torch.autocast(q_scaled.device.type, enabled=False):
            chunks = zip(q_scaled.split(ctx.chunk_size, dim=2), grad_out.to(v.dtype).split(ctx.chunk_size, dim=2),
                         _row_chunks(bias, ctx.chunk_size))
            for i, (q_c, g_c, b_c) in enumerate(chunks):
                weights, mask = ctx.kept or (_softmax(q_c, k, b_c), None)  # bit-identical to forward's
                dropped, grad_w = weights, g_c @ v.transpose(-2, -1)  # [B, h, l, S]
                if p > 0:
                    if mask is None:
                        mask = drop_mask(weights.shape, p, weights.device, ctx.seed + i)  # forward's mask
                    dropped = weights.masked_fill(mask, 0.0).mul_(kept_scale(p))
                    grad_w = grad_w.masked_fill_(mask, 0.0).mul_(kept_scale(p))
                grad_v += dropped.transpose(-2, -1) @ g_c
                grad_s = torch._softmax_backward_data(grad_w, weights, -1, weights.dtype)
                if ctx.needs_input_grad[3]:
                    grad_b.append(grad_s)
                grad_q.append((grad_s @ k) * scale)
                grad_k += grad_s.transpose(-2, -1) @ q_c
        ctx.kept = None
        grad_bias = None
        if grad_b:  # d logits / d bias = 1; summed where the bias broadcasts
            grad_bias = torch.cat(grad_b, dim=2)  # [B, h, L, S]
            broadcast = [d for d in range(4) if bias.shape[d] == 1 < grad_bias.shape[d]]
            grad_bias = grad_bias.sum(broadcast, keepdim=True) if broadcast else grad_bias
        return torch.cat(grad_q, dim=2), grad_k, grad_v, grad_bias, None, None
