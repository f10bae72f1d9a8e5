"""The DETR model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, uses_sigmoid
from .backbone import RESNETS, Backbone, Joiner
from .box_rpb import backbone_stride
from .denoising import Denoising
from .position import build_position_embedding
from .tiny import TinyBackbone
from .transformer import Transformer


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class HeadInputs(NamedTuple):
    """What a head on top of a detector reads besides its outputs (the mask head, models/segmentation.py)."""

    layers: dict[str, Tensor]  # the backbone's maps by name ("0": the last one, [B, C, h, w])
    src: Tensor  # the projected last map [B, E, h, w]
    mask: Tensor  # its padding mask [B, h, w]
    memory: Tensor  # the encoder's output [B, h*w, E]
    hs: Tensor  # the last decoder layer's output for the first group's object queries [B, Q, E]


class DETR(nn.Module):
    """DETR: backbone -> 1x1 projection -> transformer -> class and box heads.

    `forward(images)` takes a list of normalised [3, H, W] float images of any sizes
    (padded bottom/right into one batch with a mask), or an already padded [B, 3, H, W]
    tensor with an optional `mask` [B, H, W] (True on padding). It returns a dict:

    - "pred_logits": [B, Q, num_classes + 1] class logits, the last column is "no object" (with a
      sigmoid head, `class_loss` "varifocal" or "focal": [B, Q, num_classes] sigmoid logits, no "no object" column);
    - "pred_boxes": [B, Q, 4] boxes as (cx, cy, w, h) in [0, 1] relative to each image's
      unpadded size;
    - "aux_outputs" (when aux_loss): a list of L-1 dicts with the same two keys for every
      decoder layer but the last;
    - "groups" (training with `num_groups` K > 1, Group DETR): a list of K-1 dicts with the same keys
      for the other query groups. Groups run as separate decoder batches, so they never see each
      other; in eval mode only the first group (`query_embed`) runs;
    - "dn" (training with `dn_number` > 0 and `targets` given, DN-DETR): the outputs of the denoising
      queries ("pred_logits", "pred_boxes", "aux_outputs") and their "targets" (`NoisedTargets`).

    The model computes no loss: see `detr.create_criterion`.
    """

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int = 100,
                 aux_loss: bool = True, num_groups: int = 1, class_loss: str = "softmax",
                 denoising: Denoising | None = None):
        super().__init__()
        hidden_dim = transformer.d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_groups = num_groups
        self.class_loss = class_loss
        self.aux_loss = aux_loss
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + (not uses_sigmoid(class_loss)))  # + "no object"
        if uses_sigmoid(class_loss):  # sigmoid heads: scores start at 0.01, as focal-loss heads do (RetinaNet, Deformable DETR)
            nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if num_groups > 1:  # training only: the other groups' queries (not needed at inference)
            self.group_query_embed = nn.Embedding((num_groups - 1) * num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.denoising = denoising  # training only

    def forward(self, images: Sequence[Tensor] | Tensor, mask: Tensor | None = None,
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """`targets` (as the criterion takes them) feed the denoising queries in training; else unused."""
        return self.forward_with_inputs(images, mask, targets)[0]

    def forward_with_inputs(self, images: Sequence[Tensor] | Tensor, mask: Tensor | None = None,
                            targets: list[dict[str, Tensor]] | None = None) -> tuple[dict[str, Any], HeadInputs]:
        """`forward`'s outputs and the tensors a head on top of DETR reads (`HeadInputs`)."""
        batch, mask = prepare_batch(images, mask)
        feats, mask, pos, layers = self.backbone(batch, mask)
        groups = self.num_groups if self.training else 1
        queries = object_queries(self, groups)  # [K*Q, E]
        noised = extra = None
        if self.training and self.denoising is not None and targets is not None:
            noised, extra = self.denoising(targets, self.num_queries)
        src = self.input_proj(feats)  # [B, E, h, w]
        box_head = self.bbox_embed if self.transformer.box_rpb else None  # BoxRPB: boxes bias the next layer
        hs, memory = self.transformer(src, mask, queries, pos, groups, extra, box_head)  # [L, B, K*(Q+D), E]
        logits = self.class_embed(hs)  # [L, B, K*(Q+D), C+1]
        boxes = self.bbox_embed(hs).sigmoid()  # [L, B, K*(Q+D), 4]
        outs = []
        for lg, bx in zip(logits.chunk(groups, dim=2), boxes.chunk(groups, dim=2)):
            q = self.num_queries
            outs.append(layer_outputs(lg[:, :, :q], bx[:, :, :q], self.aux_loss))
            if noised is not None:
                outs[-1]["dn"] = {**layer_outputs(lg[:, :, q:], bx[:, :, q:], self.aux_loss), "targets": noised}
        if groups > 1:
            outs[0]["groups"] = outs[1:]
        return outs[0], HeadInputs(layers, src, mask, memory, hs[-1, :, : self.num_queries])


def object_queries(model: nn.Module, groups: int) -> Tensor:
    """The query embeddings of `groups` query groups [K*Q, E]: `query_embed`, then Group DETR's extra groups."""
    queries = model.query_embed.weight  # [Q, E]
    if groups > 1:
        queries = torch.cat([queries, model.group_query_embed.weight])  # [K*Q, E]
    return queries


def layer_outputs(logits: Tensor, boxes: Tensor, aux_loss: bool) -> dict[str, Any]:
    """The output dict of one query group from every decoder layer's logits and boxes [L, B, Q, *]."""
    out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    if aux_loss:
        out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
    return out


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad [3, H_i, W_i] images bottom/right to one [B, 3, H, W] batch and a [B, H, W] mask (True = pad)."""
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), first.shape[0], h, w))
    mask = torch.ones((len(images), h, w), dtype=torch.bool, device=first.device)
    for img, dst, m in zip(images, batch, mask):
        dst[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return batch, mask


def prepare_batch(images: Sequence[Tensor] | Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Check the model's input and return a padded batch [B, 3, H, W] and mask [B, H, W]."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images: expected a list of [3, H, W] tensors or a [B, 3, H, W] tensor, "
                             f"got a tensor of shape {tuple(images.shape)}")
        _check_image(images[0] if len(images) else images, "images")
        if mask is None:
            mask = torch.zeros((images.shape[0], *images.shape[2:]), dtype=torch.bool, device=images.device)
        return images, mask
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of [3, H, W] image tensors")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3:
            raise ValueError(f"images[{i}]: expected a [3, H, W] tensor, got "
                             f"{tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        _check_image(img, f"images[{i}]")
    return pad_images(images)


def _check_image(img: Tensor, where: str) -> None:
    if img.numel() == 0:
        raise ValueError(f"{where}: empty image of shape {tuple(img.shape)}")
    if img.shape[-3] != 3:
        raise ValueError(f"{where}: expected 3 colour channels, got {img.shape[-3]} (shape {tuple(img.shape)})")
    if not img.is_floating_point():
        raise TypeError(f"{where}: expected a float image normalised with ImageNet mean/std, got {img.dtype}")


def build_detr(cfg: ModelConfig) -> DETR:
    """Build a DETR from a ModelConfig (`family="detr"`; with `masks`, its backbone also returns layer1-3)."""
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {cfg.num_queries}")
    backbone = Joiner(build_backbone(cfg.backbone, cfg.train_backbone, cfg.dilation, cfg.masks),
                      build_position_embedding(cfg.position_embedding, cfg.hidden_dim))
    transformer = Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                              cfg.dropout, cfg.attention_dropout, cfg.pre_norm, cfg.attention_chunk_size,
                              backbone_stride(cfg.backbone, cfg.dilation) if cfg.box_rpb else None)
    denoising = None
    if cfg.dn_number > 0:
        denoising = Denoising(cfg.num_classes, cfg.hidden_dim, cfg.dn_number, cfg.dn_box_noise, cfg.dn_label_noise)
    return DETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss, cfg.num_groups,
                cfg.class_loss, denoising)


def build_backbone(name: str, train_backbone: bool = True, dilation: bool = False,
                   return_interm_layers: bool = False) -> Backbone | TinyBackbone:
    """A torchvision ResNet trunk (`RESNETS`) or the tiny from-scratch trunk ("tiny"); `return_interm_layers`:
    its `features` also return the maps the mask head's FPN reads."""
    if name == "tiny":
        return TinyBackbone(train_backbone, dilation, return_interm_layers)
    if name not in RESNETS:
        raise ValueError(f"backbone must be one of {[*RESNETS, 'tiny']}, got {name!r}")
    return Backbone(name, train_backbone, dilation, return_interm_layers)
