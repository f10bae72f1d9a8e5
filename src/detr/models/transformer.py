"""DETR's encoder-decoder transformer (batch-first).

Differences from `nn.Transformer`, all from the paper: position encodings are added to
queries and keys of every attention layer (not to values); the decoder returns every
layer's normalised output for the auxiliary losses; post-norm by default, pre-norm
optional (then the encoder gets a final LayerNorm).

Dropout draws its CPU masks from 15-bit integers (`dropout.py`: ~3x faster, rate rounded to
2^-15). The feed-forward blocks' ReLU and dropout are one autograd function that keeps only its
output for backward (the official code keeps three [tokens, dim_feedforward] tensors), with
the same values and gradients. When that hidden activation is large (DC5's
3,750 encoder tokens), the block keeps only its input and is recomputed in backward with the
same random draws (`torch.utils.checkpoint`), so gradients stay bit-identical.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .box_rpb import BoxRPB, valid_cells
from .dropout import Dropout, dropout_scale
from .dropout import dropout as apply_dropout


class ReluDropout(torch.autograd.Function):
    """dropout(relu(x), p) in training (`dropout.dropout`'s draws), saving only the output.

    Where the output is positive the input was positive and kept, so the output alone gives
    the gradient: grad times the kept scale there, 0 elsewhere (the official chain: times the
    dropout noise, then ReLU's threshold on its output).
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        out = F.relu(x)
        ctx.scale = 1.0
        if p > 0:
            out = apply_dropout(out, p, inplace=True)
            ctx.scale = dropout_scale(p, out.device)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        if ctx.scale != 1.0:
            grad = grad * ctx.scale
        return torch.ops.aten.threshold_backward(grad, out, 0), None


# Feed-forward hidden activations of at least this many elements (16 MiB in fp32) are recomputed.
RECOMPUTE_FFN_ELEMENTS = 2**22


def _ffn(layer: EncoderLayer | DecoderLayer, x: Tensor) -> Tensor:
    """linear2(dropout(relu(linear1(x)))), x [B, N, E]."""
    if not (layer.training and layer.dropout.p < 1 and torch.is_grad_enabled()):
        return layer.linear2(layer.dropout(F.relu(layer.linear1(x))))
    if x.shape[0] * x.shape[1] * layer.linear1.out_features >= RECOMPUTE_FFN_ELEMENTS:
        return checkpoint(_ffn_train, layer, x, use_reentrant=False)
    return _ffn_train(layer, x)


def _ffn_train(layer: EncoderLayer | DecoderLayer, x: Tensor) -> Tensor:
    hidden = layer.linear1(x)  # [B, N, dim_feedforward]
    if hidden.requires_grad:
        hidden = ReluDropout.apply(hidden, layer.dropout.p)
    else:
        hidden = layer.dropout(F.relu(hidden))
    return layer.linear2(hidden)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, attention_dropout: float,
                 pre_norm: bool, chunk_size: int, fused_training: bool):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, attention_dropout, chunk_size, fused_training)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return _ffn(self, x)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """src, pos [B, S, E]; mask [B, S] True on padding -> [B, S, E]."""
        if self.pre_norm:
            x = self.norm1(src)
            src = src + self.dropout1(self.self_attn(x + pos, x + pos, x, mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        qk = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, attention_dropout: float,
                 pre_norm: bool, chunk_size: int, fused_training: bool, box_rpb_stride: int | None = None):
        super().__init__()
        self.box_rpb = None if box_rpb_stride is None else BoxRPB(nhead, box_rpb_stride)
        self.self_attn = Attention(d_model, nhead, attention_dropout, chunk_size, fused_training)
        self.multihead_attn = Attention(d_model, nhead, attention_dropout, chunk_size, fused_training)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return _ffn(self, x)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, mask: Tensor,
                self_attn_mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """tgt, query_pos [B, Q, E]; memory, pos [B, S, E]; mask [B, S]; self_attn_mask [Q, Q] (True: may
        not attend); bias [B, heads, Q, S] added to the cross-attention logits (BoxRPB) -> [B, Q, E]."""
        key = memory + pos
        if self.pre_norm:
            x = self.norm1(tgt)
            tgt = tgt + self.dropout1(self.self_attn(x + query_pos, x + query_pos, x, attn_mask=self_attn_mask))
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(x + query_pos, key, memory, mask, bias=bias))
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, attn_mask=self_attn_mask)))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt + query_pos, key, memory, mask, bias=bias)))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int, norm: nn.LayerNorm | None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, mask)
        return src if self.norm is None else self.norm(src)


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        if num_layers and self.layers[0].box_rpb is not None:
            self.layers[0].box_rpb = None  # the first layer has no box yet to bias its attention with
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, mask: Tensor,
                self_attn_mask: Tensor | None = None, box_rpb: BoxRPBInputs | None = None) -> Tensor:
        """-> every layer's output after the shared final norm, [L, B, Q, E]. With `box_rpb` (the box head, the
        padding mask [B, h, w]), each layer after the first biases its cross-attention with the boxes the layer
        before it predicts (detached, as Plain DETR's reference boxes)."""
        outputs: list[Tensor] = []
        for layer in self.layers:
            bias = None
            if box_rpb is not None and layer.box_rpb is not None:
                box_head, grid_mask = box_rpb
                boxes = box_head(outputs[-1]).sigmoid().detach()  # [B, Q, 4]
                bias = layer.box_rpb(boxes, valid_cells(grid_mask), tuple(grid_mask.shape[1:]))
            tgt = layer(tgt, memory, pos, query_pos, mask, self_attn_mask, bias)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


# BoxRPB's inputs to the decoder: the detector's box head (decoder output [B, Q, E] -> box logits [B, Q, 4]) and
# the feature map's padding mask [B, h, w].
BoxRPBInputs = tuple[Callable[[Tensor], Tensor], Tensor]


def flatten_features(src: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Feature map and positions [B, E, h, w], mask [B, h, w] -> tokens [B, S, E], [B, S, E] and mask [B, S]."""
    return src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), mask.flatten(1)


def fold_groups(query_embed: Tensor, batch: int, groups: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Group DETR's query groups as separate batch entries, so that groups never see each other.

    query_embed [K*Q, E] -> query positions [B*K, Q, E] (image b's group k at b*K + k), and `fold`, which
    repeats a per-image tensor [B, ...] for each group [B*K, ...] (the identity for one group).
    """
    query_pos = query_embed.unflatten(0, (groups, -1))[None].expand(batch, -1, -1, -1).flatten(0, 1)
    if groups == 1:
        return query_pos, lambda x: x
    return query_pos, lambda x: x.repeat_interleave(groups, dim=0)


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries.

    Args:
        d_model: width (hidden_dim). nhead: attention heads.
        num_encoder_layers / num_decoder_layers: depth of each stack.
        dim_feedforward: FFN width. dropout: dropout on residual branches and FFN.
        attention_dropout: dropout on attention weights. None: the paper's recipe (same as
            dropout, exact attention in training). 0.0: no dropout on the weights and the
            fused kernel in training too (fastest; not the paper's recipe).
        pre_norm: LayerNorm before each sub-layer instead of after.
        chunk_size: queries per chunk when attention weights must be materialised.
        box_rpb_stride: Plain DETR's BoxRPB in the decoder's cross-attention (`box_rpb.py`), for features of this
            stride; None: off.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, attention_dropout: float | None = None,
                 pre_norm: bool = False, chunk_size: int = 1024, box_rpb_stride: int | None = None):
        super().__init__()
        fused_training = attention_dropout == 0.0
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        args = (d_model, nhead, dim_feedforward, dropout, attention_dropout, pre_norm, chunk_size, fused_training)
        self.encoder = Encoder(EncoderLayer(*args), num_encoder_layers, nn.LayerNorm(d_model) if pre_norm else None)
        self.decoder = Decoder(DecoderLayer(*args, box_rpb_stride), num_decoder_layers, d_model)
        self.d_model = d_model
        self.box_rpb = box_rpb_stride is not None
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor, groups: int = 1,
                extra: tuple[Tensor, Tensor, Tensor] | None = None,
                box_head: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """src, pos [B, E, h, w]; mask [B, h, w]; query_embed [K*Q, E] for `groups` K.

        Returns the decoder outputs [L, B, K*(Q+D), E] and the encoder memory [B, h*w, E]. Each group of
        Q queries is decoded as its own batch entry over the same memory, so groups cannot see each other.
        `extra` (denoising queries) = (content [B, D, E], position [B, D, E], self-attention mask
        [Q+D, Q+D]): D more queries after each group's Q, with their own decoder input and position.
        `box_head` (with BoxRPB): the detector's box head, whose boxes bias the next layer's cross-attention.
        """
        grid_mask = mask  # [B, h, w]
        src, pos, mask = flatten_features(src, pos, mask)  # [B, S, E], [B, S, E], [B, S]
        memory = self.encoder(src, pos, mask)
        b, k = src.shape[0], groups
        query_pos, fold = fold_groups(query_embed, b, k)  # [B*K, Q, E]
        tgt, self_attn_mask = torch.zeros_like(query_pos), None
        if extra is not None:
            content, position, self_attn_mask = extra
            tgt = torch.cat([tgt, fold(content)], dim=1)  # [B*K, Q+D, E]
            query_pos = torch.cat([query_pos, fold(position)], dim=1)
        rpb = None if box_head is None else (box_head, fold(grid_mask))
        hs = self.decoder(tgt, fold(memory), fold(pos), query_pos, fold(mask), self_attn_mask, rpb)
        return hs.unflatten(1, (b, k)).flatten(2, 3), memory  # [L, B, K*(Q+D), E]
