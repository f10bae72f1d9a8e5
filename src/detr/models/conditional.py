"""Conditional DETR (Meng et al., ICCV 2021, arXiv 2108.06152): DETR with conditional cross-attention.

Each decoder query has a reference point, predicted from its query embedding. In cross-attention
the query is the concatenation, head by head, of a content part (the decoder embedding) and a
spatial part: the sine embedding of the reference point scaled element-wise by a transformation
of the decoder embedding (`query_scale`, identity in the first layer). Keys are likewise the
concatenation of the memory's content and its position encoding. Boxes are predicted as offsets
from the reference point in inverse-sigmoid space. The class head is a sigmoid focal-loss head of
num_classes outputs; postprocessing takes the top 100 over queries x classes.

Parameter names are the official ones (Atten4Vis/ConditionalDETR, models/transformer.py and
models/conditional_detr.py), so official checkpoints load strictly. The encoder, backbone and
position encoding are DETR's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, uses_sigmoid
from .attention import ProjectedAttention
from .backbone import Joiner
from .detr import MLP, HeadInputs, build_backbone, layer_outputs, object_queries, prepare_batch
from .dropout import Dropout
from .position import build_position_embedding, interleave_sin_cos, sine_frequencies
from .transformer import Encoder, EncoderLayer, _ffn, flatten_features, fold_groups

SIGMOID_PRIOR = 0.01  # initial score of every class of a sigmoid head (RetinaNet's prior)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to at least `eps` (the official formula)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embedding(points: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """[..., 2] points (x, y) in [0, 1] -> [..., 2 * num_feats]: the sine encoding of y, then of x.

    The same frequencies and sin/cos interleaving as the feature map's `PositionEmbeddingSine`, so
    that a reference point and the feature cell under it have matching encodings.
    """
    freq = sine_frequencies(num_feats, temperature, points.device)  # [n]
    scaled = points * (2 * math.pi)
    # y first, as the feature map's encoding
    return torch.cat([interleave_sin_cos(coord[..., None] / freq) for coord in (scaled[..., 1], scaled[..., 0])], -1)


def _concat_heads(content: Tensor, spatial: Tensor, heads: int) -> Tensor:
    """[B, N, E] x [B, N, E] -> [B, N, 2E]: each head's content channels followed by its spatial ones."""
    both = torch.stack([content.unflatten(-1, (heads, -1)), spatial.unflatten(-1, (heads, -1))], dim=-2)
    return both.flatten(-3)  # [B, N, h, 2, E/h] -> [B, N, 2E]


class ConditionalDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, conditional cross-attention, FFN (official names)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, attention_dropout: float,
                 chunk_size: int, fused_training: bool):
        super().__init__()
        linear = lambda: nn.Linear(d_model, d_model)  # noqa: E731
        self.sa_qcontent_proj, self.sa_qpos_proj = linear(), linear()
        self.sa_kcontent_proj, self.sa_kpos_proj, self.sa_v_proj = linear(), linear(), linear()
        self.self_attn = ProjectedAttention(d_model, nhead, attention_dropout, chunk_size, fused_training)
        self.ca_qcontent_proj, self.ca_qpos_proj = linear(), linear()  # ca_qpos_proj: first layer only
        self.ca_kcontent_proj, self.ca_kpos_proj, self.ca_v_proj = linear(), linear(), linear()
        self.ca_qpos_sine_proj = linear()
        self.cross_attn = ProjectedAttention(d_model, nhead, attention_dropout, chunk_size, fused_training)
        self.nhead = nhead
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = Dropout(dropout), Dropout(dropout), Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, query_sine_embed: Tensor,
                mask: Tensor) -> Tensor:
        """tgt, query_pos, query_sine_embed [B, Q, E]; memory, pos [B, S, E]; mask [B, S] -> [B, Q, E]."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        q, k, k_pos = self.ca_qcontent_proj(tgt), self.ca_kcontent_proj(memory), self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:  # the first layer also adds the positions to the content parts
            q, k = q + self.ca_qpos_proj(query_pos), k + k_pos
        q = _concat_heads(q, self.ca_qpos_sine_proj(query_sine_embed), self.nhead)  # [B, Q, 2E]
        k = _concat_heads(k, k_pos, self.nhead)  # [B, S, 2E]
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(q, k, self.ca_v_proj(memory), mask)))
        return self.norm3(tgt + self.dropout3(_ffn(self, tgt)))


class ConditionalDecoder(nn.Module):
    """The decoder stack with the reference-point head and the spatial-query transformation."""

    def __init__(self, layer: ConditionalDecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        for later in self.layers[1:]:
            later.ca_qpos_proj = None  # as the official code: only the first layer has it
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, 2, 2)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> every layer's output after the shared final norm [L, B, Q, E], reference points [B, Q, 2].

        Each layer takes the previous layer's output before the norm (the official decoder; the
        transformers port feeds the normed one when auxiliary_loss is set).
        """
        reference = self.ref_point_head(query_pos).sigmoid()  # [B, Q, 2] (x, y) in [0, 1]
        sine = sine_embedding(reference, query_pos.shape[-1] // 2)  # [B, Q, E]
        outputs = []
        for i, layer in enumerate(self.layers):
            scaled = sine if i == 0 else sine * self.query_scale(tgt)  # the spatial query
            tgt = layer(tgt, memory, pos, query_pos, scaled, mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs), reference


class ConditionalTransformer(nn.Module):
    """DETR's encoder and the conditional decoder (post-norm; the official decoder has no pre-norm)."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, attention_dropout: float | None = None,
                 chunk_size: int = 1024):
        super().__init__()
        fused_training = attention_dropout == 0.0
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        args = (d_model, nhead, dim_feedforward, dropout, attention_dropout)
        self.encoder = Encoder(EncoderLayer(*args, False, chunk_size, fused_training), num_encoder_layers, None)
        self.decoder = ConditionalDecoder(ConditionalDecoderLayer(*args, chunk_size, fused_training),
                                          num_decoder_layers, d_model)
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor,
                groups: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """src, pos [B, E, h, w]; mask [B, h, w]; query_embed [K*Q, E] for `groups` K.

        Returns the decoder outputs [L, B, K*Q, E], the reference points [B, K*Q, 2] and the memory
        [B, h*w, E]. Each group decodes as its own batch entry over the same memory (Group DETR).
        """
        src, pos, mask = flatten_features(src, pos, mask)  # [B, S, E], [B, S, E], [B, S]
        memory = self.encoder(src, pos, mask)
        b, k = src.shape[0], groups
        query_pos, fold = fold_groups(query_embed, b, k)  # [B*K, Q, E]
        hs, reference = self.decoder(torch.zeros_like(query_pos), fold(memory), fold(pos), query_pos, fold(mask))
        return hs.unflatten(1, (b, k)).flatten(2, 3), reference.unflatten(0, (b, k)).flatten(1, 2), memory


class ConditionalDETR(nn.Module):
    """Conditional DETR: backbone -> 1x1 projection -> encoder -> conditional decoder -> class and box heads.

    `forward(images, mask)` takes what `DETR.forward` takes and returns the same dict:
    "pred_logits" [B, Q, num_classes] (sigmoid logits; [B, Q, num_classes + 1] for
    `class_loss="softmax"`), "pred_boxes" [B, Q, 4] (cx, cy, w, h) in [0, 1], "aux_outputs" for
    every decoder layer but the last, and in training with `num_groups` K > 1 "groups" (Group DETR).
    Denoising queries are not supported (`targets` is accepted and unused).
    """

    def __init__(self, backbone: Joiner, transformer: ConditionalTransformer, num_classes: int,
                 num_queries: int = 300, aux_loss: bool = True, num_groups: int = 1, class_loss: str = "focal"):
        super().__init__()
        hidden_dim = transformer.d_model
        self.num_classes, self.num_queries, self.num_groups = num_classes, num_queries, num_groups
        self.class_loss, self.aux_loss = class_loss, aux_loss
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + (not uses_sigmoid(class_loss)))  # + "no object"
        if uses_sigmoid(class_loss):
            nn.init.constant_(self.class_embed.bias, -math.log((1 - SIGMOID_PRIOR) / SIGMOID_PRIOR))
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)  # boxes start at the reference points
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if num_groups > 1:  # training only
            self.group_query_embed = nn.Embedding((num_groups - 1) * num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone

    def forward(self, images: Sequence[Tensor] | Tensor, mask: Tensor | None = None,
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        return self.forward_with_inputs(images, mask, targets)[0]

    def forward_with_inputs(self, images: Sequence[Tensor] | Tensor, mask: Tensor | None = None,
                            targets: list[dict[str, Tensor]] | None = None) -> tuple[dict[str, Any], HeadInputs]:
        """`forward`'s outputs and the tensors a head on top of it reads (`HeadInputs`, as DETR's)."""
        batch, mask = prepare_batch(images, mask)
        feats, mask, pos, layers = self.backbone(batch, mask)
        groups = self.num_groups if self.training else 1
        queries = object_queries(self, groups)  # [K*Q, E]
        src = self.input_proj(feats)  # [B, E, h, w]
        hs, reference, memory = self.transformer(src, mask, queries, pos, groups)  # [L, B, K*Q, E]
        offsets = self.bbox_embed(hs)  # [L, B, K*Q, 4] in inverse-sigmoid space
        centres = offsets[..., :2] + inverse_sigmoid(reference)  # [L, B, K*Q, 2]
        boxes = torch.cat([centres, offsets[..., 2:]], dim=-1).sigmoid()
        logits = self.class_embed(hs)  # [L, B, K*Q, C]
        outs = [layer_outputs(lg, bx, self.aux_loss) for lg, bx in zip(logits.chunk(groups, 2), boxes.chunk(groups, 2))]
        if groups > 1:
            outs[0]["groups"] = outs[1:]
        return outs[0], HeadInputs(layers, src, mask, memory, hs[-1, :, : self.num_queries])


def build_conditional(cfg: ModelConfig) -> ConditionalDETR:
    """Build a Conditional DETR from a ModelConfig (`family="conditional_detr"`)."""
    if cfg.pre_norm:
        raise ValueError("pre_norm: Conditional DETR's decoder is post-norm only (as the official code)")
    if cfg.dn_number > 0:
        raise ValueError(f"dn_number {cfg.dn_number}: denoising queries are not supported by Conditional DETR "
                         "here (its queries need box anchors); use dn_number 0")
    backbone = Joiner(build_backbone(cfg.backbone, cfg.train_backbone, cfg.dilation, cfg.masks),
                      build_position_embedding(cfg.position_embedding, cfg.hidden_dim))
    transformer = ConditionalTransformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers,
                                         cfg.dim_feedforward, cfg.dropout, cfg.attention_dropout,
                                         cfg.attention_chunk_size)
    return ConditionalDETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss, cfg.num_groups,
                           cfg.class_loss)
