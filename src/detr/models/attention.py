"""Multi-head attention with the parameter layout of `nn.MultiheadAttention`.

Two code paths compute the same function:
- fused: `scaled_dot_product_attention`, which never materialises the weights. Used in
  eval mode, and in training when `fused_training` is set and there is no dropout on
  the weights. Its backward rounds differently from the official code (gradients agree
  to ~1e-4 relative in fp32, not better), so training uses it only on request;
- exact: explicit scale, softmax, dropout and matmul in the official order of operations
  (gradients agree with the official code to ~1e-5), computed in chunks of queries with
  recomputation in backward, so memory grows with chunk x keys instead of queries x keys.
  The recomputation replays the same RNG state, so the dropout mask, and therefore the
  gradient, is that of the unchunked computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Batch-first multi-head attention.

    Args:
        embed_dim: model width E.
        num_heads: heads; E must be divisible by it.
        dropout: dropout on the attention weights during training.
        chunk_size: queries per chunk on the exact path.
        fused_training: use the fused kernel in training too when dropout is 0.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, chunk_size: int = 1024,
                 fused_training: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"hidden_dim ({embed_dim}) must be divisible by nheads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.chunk_size = chunk_size
        self.fused_training = fused_training
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L|S, E] inputs -> per-head q [B, h, L, d], k and v [B, h, S, d]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        heads = [F.linear(x, w, b).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
                 for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))]
        return heads[0], heads[1], heads[2]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """query [B, L, E], key/value [B, S, E], key_padding_mask [B, S] (True = ignore) -> [B, L, E]."""
        q, k, v = self._project(query, key, value)
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
        p = self.dropout if self.training else 0.0
        if not self.training or (p == 0.0 and self.fused_training):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            bias = _additive_mask(keep, q.dtype)
            chunks = [self._explicit(q_c, k, v, bias, p) for q_c in q.split(self.chunk_size, dim=2)]
            out = torch.cat(chunks, dim=2)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float) -> Tensor:
        if torch.is_grad_enabled() and q.requires_grad:
            # Keep only the chunk's inputs for backward; the L x S weights are recomputed.
            return checkpoint(_softmax_dropout_attention, q, k, v, bias, p, use_reentrant=False)
        return _softmax_dropout_attention(q, k, v, bias, p)

    @torch.no_grad()
    def attention_weights(self, query: Tensor, key: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Head-averaged attention weights [B, L, S] (for pictures; no dropout)."""
        q, k, _ = self._project(query, key, key)
        bias = _additive_mask(None if key_padding_mask is None else ~key_padding_mask[:, None, None, :], q.dtype)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias
        return scores.softmax(-1).mean(1)


def _additive_mask(keep: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))


def _softmax_dropout_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) with dropout p on the weights, times v."""
    scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)  # [B, h, L, S]
    if bias is not None:
        scores = scores + bias
    weights = F.dropout(scores.softmax(-1), p=p, training=True)
    return weights @ v
