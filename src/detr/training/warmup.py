"""Backbone warm-up: a stand-in for ImageNet pretraining when no pretrained weights are at hand.

DETR assumes a backbone whose features already tell objects apart; from random weights it
sits for a very long time on its "mean box, prior class" plateau. Where ImageNet weights
cannot be fetched (the built-in demo, offline machines), `warm_up_backbone` trains the ResNet
trunk for a few hundred steps on a dense task built from the training set itself: every pixel
is labelled with the category of the (smallest) box covering it, or background, and a 1x1
convolution on the last stage, upsampled to the image, is trained with cross-entropy.

During the warm-up the frozen BatchNorms become ordinary trainable BatchNorms (random weights
need normalisation); afterwards they are frozen again with the learnt statistics, exactly as
ImageNet weights arrive. The tiny trunk (`backbone="tiny"`) has trainable BatchNorms already:
it is warmed up as it is and keeps them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..box_ops import cxcywh_to_xyxy, scale_boxes
from ..models.backbone import Backbone, InplaceFrozenBatchNorm2d
from ..models.detr import pad_images
from ..models.tiny import TinyBackbone
from ..runtime import autocast

log = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy's ignore_index: padding pixels


def box_label_map(targets: Sequence[dict[str, Tensor]], height: int, width: int) -> Tensor:
    """[B, H, W] long: 1 + the label of the smallest box covering each pixel, 0 for background,
    IGNORE on padding. `targets` hold normalised cxcywh "boxes", "labels" and the unpadded "size"."""
    labels = torch.full((len(targets), height, width), IGNORE, dtype=torch.long)
    for out, t in zip(labels, targets):
        h, w = (int(v) for v in t["size"])
        out[:h, :w] = 0
        boxes = scale_boxes(cxcywh_to_xyxy(t["boxes"])[None], t["size"][None])[0].round().long()  # [N, 4] pixels
        area = t["boxes"][:, 2] * t["boxes"][:, 3]
        for i in area.argsort(descending=True).tolist():  # small boxes drawn last, on top
            x0, y0, x1, y1 = boxes[i].tolist()
            out[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = int(t["labels"][i]) + 1
    return labels


def _swap_norms(module: nn.Module, trainable: bool) -> int:
    """FrozenBatchNorm2d -> trainable BatchNorm2d (same statistics), or back; returns how many were swapped."""
    old_type, new_type = (FrozenBatchNorm2d, nn.BatchNorm2d) if trainable else (nn.BatchNorm2d, InplaceFrozenBatchNorm2d)
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, old_type):
                swapped += 1
                new = new_type(child.weight.numel()).to(child.weight.device)
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(new, key).copy_(getattr(child, key))
                setattr(parent, name, new)
    return swapped


def warm_up_backbone(backbone: Backbone | TinyBackbone, loader: Iterable[tuple[Sequence[Tensor], Sequence[dict[str, Any]]]],
                     num_classes: int, steps: int, device: torch.device, lr: float = 2e-3,
                     log_every: int = 0, head: nn.Module | None = None, amp: str = "none") -> dict[str, float]:
    """Train `backbone`'s trunk for `steps` steps on the dense box-label task (see the module doc).

    Args:
        backbone: the model's `Backbone` or `TinyBackbone`; its trainable/frozen parameter split is kept.
        loader: yields (images, targets) batches as the training loader does (cycled if short).
        num_classes: category ids are < num_classes.
        steps: optimiser steps.
        device: where to train.
        lr: AdamW learning rate.
        log_every: log the loss every this many steps (0: never).
        head: the dense head, [B, C, h, w] features -> [B, num_classes + 1, h, w] logits (default: a new 1x1
            convolution); pass one to measure what the warm-up learnt afterwards.
        amp: "bf16" runs the forward pass under bf16 autocast, as training does (the loss stays fp32);
            anything else warms up in fp32 (fp16 would need the loss scaling this loop does not have).

    Returns:
        {"loss", "accuracy"}: the last step's loss and its accuracy on object pixels.
    """
    body = backbone.body
    trainable = [p.requires_grad for p in body.parameters()]
    frozen_norms = _swap_norms(body, trainable=True)  # 0 for the tiny trunk: its norms train already
    if head is None:
        head = nn.Conv2d(backbone.num_channels, num_classes + 1, kernel_size=1).to(device)
    params = [*body.parameters(), *head.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    was_training = backbone.training
    body.train()
    stats = {"loss": float("nan"), "accuracy": float("nan")}
    for step, (images, targets) in enumerate(itertools.islice(_cycle(loader), steps)):
        with autocast(device, "bf16" if amp == "bf16" else "none"):
            logits, labels = dense_task(backbone, head, images, targets, device)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logged = bool(log_every) and (step + 1) % log_every == 0
        if logged or step + 1 == steps:  # the accuracy only where it is read: argmax over classes costs ~10% of a step
            stats = {"loss": loss.item(), "accuracy": _object_accuracy(logits.detach(), labels)}
        if logged:
            log.info("backbone warm-up step %d/%d: loss %.3f, object-pixel accuracy %.2f", step + 1, steps,
                     stats["loss"], stats["accuracy"])
    if frozen_norms:
        _swap_norms(body, trainable=False)
    for p, flag in zip(body.parameters(), trainable):
        p.requires_grad_(flag)
    backbone.train(was_training)
    return stats


def _object_accuracy(logits: Tensor, labels: Tensor) -> float:
    """The share of object pixels (label > 0) whose top class is their label (1.0 when there are none)."""
    objects = labels > 0
    return (logits.argmax(1) == labels)[objects].float().mean().item() if objects.any() else 1.0


def dense_task(backbone: Backbone | TinyBackbone, head: nn.Module, images: Sequence[Tensor],
               targets: Sequence[dict[str, Any]], device: torch.device) -> tuple[Tensor, Tensor]:
    """One batch of the dense box-label task: `head`'s logits upsampled to the padded images [B, C, H, W] and the
    pixel labels [B, H, W] (`box_label_map`)."""
    batch, mask = pad_images([img.to(device) for img in images])  # [B, 3, H, W], [B, H, W]
    labels = box_label_map(targets, *batch.shape[-2:]).to(device)  # [B, H, W]
    features = backbone.features(batch, mask)[0]["0"]  # as DETR will run the trunk (the tiny one masks padding)
    return F.interpolate(head(features), size=batch.shape[-2:], mode="bilinear"), labels


def _cycle(loader: Iterable) -> Iterable:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("backbone warm-up: the training loader yields no batches")
