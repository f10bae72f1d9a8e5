"""The official segmentation model (DETR paper, section 4.4): a mask head on top of a detector.

For each object query, a multi-head attention map of its last decoder output over the encoder memory
(`MHAttentionMap`, softmax over heads and positions together, no values), concatenated with the projected
last feature map and upsampled by a small FPN-style convolution head (`MaskHeadSmallConv`) that adds the
backbone's stride 16, 8 and 4 maps, gives one mask logit map per query at 1/4 of the padded input.

Parameter names are the official ones (`detr.*`, `bbox_attention.*`, `mask_head.*`), so the published
panoptic checkpoints load strictly. Two exact rewrites make it cheaper than the official head, with the
same function: the first convolution's input channels are split, so that its share over the image features
runs once per image instead of once per query; and the FPN maps are broadcast over the queries instead of
being copied Q times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditional import ConditionalDETR
from .detr import DETR

Detector = DETR | ConditionalDETR


class MHAttentionMap(nn.Module):
    """Attention weights of queries over a feature map, softmax-normalised over heads and positions together.

    Args:
        query_dim: width of queries and keys. hidden_dim: width of their projections. num_heads: heads.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by the number of heads {num_heads}")
        self.num_heads, self.hidden_dim = num_heads, hidden_dim
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        for layer in (self.q_linear, self.k_linear):
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """q [B, Q, E], memory [B, S, E] and mask [B, h, w] (True on padding, S = h*w) -> [B, Q, heads, h, w]."""
        nq = q.shape[1]
        h, w = mask.shape[-2:]
        c = self.hidden_dim // self.num_heads
        # -1 for the batch: an exported (traced) graph keeps it dynamic
        qh = self.q_linear(q).unflatten(-1, (self.num_heads, c))  # [B, Q, n, c]
        kh = self.k_linear(memory).unflatten(-1, (self.num_heads, c))  # [B, S, n, c]
        weights = torch.einsum("bqnc,bsnc->bqns", qh * self.normalize_fact, kh)  # [B, Q, n, S]
        weights = weights.masked_fill(mask.flatten(1)[:, None, None, :], float("-inf"))
        return weights.flatten(2).softmax(-1).view(-1, nq, self.num_heads, h, w)


class MaskHeadSmallConv(nn.Module):
    """The FPN-style mask head: 3x3 convolutions with GroupNorm, upsampled x2 three times with a 1x1 adapter
    of a backbone map added at each step.

    Args:
        dim: input channels (hidden_dim + heads: the features, then the attention maps).
        fpn_dims: channels of the backbone's stride 16, 8 and 4 maps ((1024, 512, 256) for ResNet-50/101).
        context_dim: hidden_dim; the widths halve from context_dim / 2 down to context_dim / 16.
    """

    def __init__(self, dim: int, fpn_dims: Sequence[int], context_dim: int):
        super().__init__()
        widths = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        if any(c % 8 for c in widths):
            raise ValueError(f"mask head widths {widths} (hidden_dim + nheads, then hidden_dim / 2 .. / 16) must be "
                             "multiples of 8 for its GroupNorm(8): use hidden_dim a multiple of 128, nheads of 8")
        for i, (c_in, c_out) in enumerate(zip([dim, *widths[:-1]], widths), start=1):
            setattr(self, f"lay{i}", nn.Conv2d(c_in, c_out, 3, padding=1))
            setattr(self, f"gn{i}", nn.GroupNorm(8, c_out))
        self.out_lay = nn.Conv2d(widths[-1], 1, 3, padding=1)
        for i, (c_in, c_out) in enumerate(zip(fpn_dims, widths[1:4]), start=1):
            setattr(self, f"adapter{i}", nn.Conv2d(c_in, c_out, 1))
        self.dim = dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, src: Tensor, attention: Tensor, fpns: Sequence[Tensor]) -> Tensor:
        """src [B, E, h, w], attention [B, Q, n, h, w], fpns: the stride 16, 8, 4 maps -> mask logits [B, Q, H4, W4]."""
        q, e = attention.shape[1], src.shape[1]  # (batch sizes as -1 below: dynamic in an exported graph)
        weight = self.lay1.weight  # over cat(src repeated per query, attention): its src part runs once per image
        x = F.conv2d(attention.flatten(0, 1), weight[:, e:], padding=1)  # [B*Q, dim, h, w]
        x = (x.unflatten(0, (-1, q)) + F.conv2d(src, weight[:, :e], self.lay1.bias, padding=1)[:, None]).flatten(0, 1)
        x = F.relu(self.gn1(x))
        x = F.relu(self.gn2(self.lay2(x)))
        for i, fpn in enumerate(fpns, start=1):
            fpn = getattr(self, f"adapter{i}")(fpn)  # [B, C, H, W], broadcast over the queries
            x = F.interpolate(x, size=fpn.shape[-2:], mode="nearest")  # [B*Q, C, H, W]
            x = (fpn[:, None] + x.unflatten(0, (-1, q))).flatten(0, 1)
            x = F.relu(getattr(self, f"gn{i + 2}")(getattr(self, f"lay{i + 2}")(x)))
        return self.out_lay(x).view(-1, q, *x.shape[-2:])


class DETRsegm(nn.Module):
    """A detector (DETR or Conditional DETR) with the official mask head.

    `forward` takes what `DETR.forward` takes and returns its dict plus "pred_masks" [B, Q, H/4, W/4]: one mask
    logit map per query of the first group, at a quarter of the padded batch (no masks for auxiliary layers,
    other query groups or denoising queries). The model computes no loss: the criterion's `loss_mask` and
    `loss_dice` do.

    Args:
        detr: the detector; built with `masks` (its backbone returns the maps the head reads).
        nheads: heads of the attention maps (the detector's).
        freeze_detr: freeze the detector (`freeze_detector`).
    """

    def __init__(self, detr: Detector, nheads: int, freeze_detr: bool = False):
        super().__init__()
        self.detr = detr
        self.freeze_detr = False
        if freeze_detr:
            self.freeze_detector()
        hidden_dim, trunk = detr.transformer.d_model, detr.backbone[0]
        if not hasattr(trunk, "fpn_layers"):
            raise ValueError(f"backbone {type(trunk).__name__} gives no stride 16, 8, 4 maps for the mask head")
        self.fpn_layers: tuple[str, ...] = trunk.fpn_layers
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, trunk.fpn_channels, hidden_dim)

    def forward(self, images: Sequence[Tensor] | Tensor, mask: Tensor | None = None,
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detr):  # nothing to record
            out, inputs = self.detr.forward_with_inputs(images, mask, targets)
        missing = [name for name in self.fpn_layers if name not in inputs.layers]
        if missing:
            raise RuntimeError(f"the backbone returned no {missing}: build the detector with masks=True")
        attention = self.bbox_attention(inputs.hs, inputs.memory, inputs.mask)  # [B, Q, n, h, w]
        fpns = [inputs.layers[name] for name in self.fpn_layers]
        out["pred_masks"] = self.mask_head(inputs.src, attention, fpns)  # [B, Q, H/4, W/4]
        return out

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The parameters whose gradient norms are clipped each on its own (training/engine.py): the detector's
        and the mask head's when both train; one group (the mask head's) when the detector is frozen."""
        head = [*self.bbox_attention.parameters(), *self.mask_head.parameters()]
        return [head] if self.freeze_detr else [list(self.detr.parameters()), head]

    def freeze_detector(self) -> None:
        """Freeze every detector parameter (official `--frozen_weights`: only the mask head trains); the detector
        then runs without recording gradients, and a frozen BatchNorm (the tiny trunk's) keeps its statistics."""
        self.freeze_detr = True
        self.detr.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DETRsegm:
        """As nn.Module's; a frozen detector also keeps the running statistics of its BatchNorms (the tiny trunk's)."""
        super().train(mode)
        if self.freeze_detr:
            for m in self.detr.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # The detector's attributes that training, evaluation and inference read on any model.
    backbone = property(lambda self: self.detr.backbone)
    transformer = property(lambda self: self.detr.transformer)
    num_classes = property(lambda self: self.detr.num_classes)
    num_queries = property(lambda self: self.detr.num_queries)
    num_groups = property(lambda self: self.detr.num_groups)
    class_loss = property(lambda self: self.detr.class_loss)

    @property
    def aux_loss(self) -> bool:
        return self.detr.aux_loss

    @aux_loss.setter
    def aux_loss(self, value: bool) -> None:
        self.detr.aux_loss = value

