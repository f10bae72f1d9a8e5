"""DETR's set loss: Hungarian matching, then class, L1 and GIoU losses on matched pairs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..box_ops import box_iou_pairs, cxcywh_to_xyxy, elementwise_giou
from ..config import (
    CLASS_LOSS_DEFAULTS,
    SIGMOID_HEADS,
    ClassLoss,
    LossConfig,
    check_choice,
    dataclass_from_dict,
)
from ..distributed import mean_across_processes
from .focal import mal_loss, sigmoid_focal_loss, varifocal_loss
from .masks import mask_losses
from .matcher import HungarianMatcher


def aux_suffix(layer: int) -> str:
    """Suffix of decoder layer `layer`'s auxiliary loss names (official: `_0` ... `_{L-2}`)."""
    return f"_{layer}"


# --class_loss -> the name of its loss term (the focal head's is Conditional DETR's official name)
CLASS_LOSS_TERMS = {"softmax": "loss_ce", "varifocal": "loss_vfl", "focal": "loss_ce", "mal": "loss_mal"}


def build_weight_dict(bbox_loss_coef: float, giou_loss_coef: float, num_aux_layers: int,
                      class_loss: str = "softmax", denoising: bool = False, cls_loss_coef: float = 1.0,
                      masks: tuple[float, float] | None = None, one2many_coef: float = 0.0) -> dict[str, float]:
    """Weights of every loss term that enters the total, auxiliary layers and denoising included; `masks`: the
    weights of loss_mask and loss_dice (last decoder layer only, as the official code computes them);
    `one2many_coef` > 0: the one-to-many terms (suffixed `_o2m`), weighted that much relative to their own."""
    base = {CLASS_LOSS_TERMS[check_choice(class_loss, ClassLoss, "class_loss")]: cls_loss_coef,
            "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    one2many = {f"{k}_o2m": v * one2many_coef for k, v in base.items()} if one2many_coef > 0 else {}
    if denoising:
        base.update({f"{k}_dn": v for k, v in base.items()})
    base.update(one2many)
    weights = dict(base)
    for i in range(num_aux_layers):
        weights.update({k + aux_suffix(i): v for k, v in base.items()})
    if masks is not None:
        weights.update({"loss_mask": masks[0], "loss_dice": masks[1]})
    return weights


class SetCriterion(nn.Module):
    """Computes the loss dict for DETR outputs against a list of targets.

    Returns `loss_ce` (softmax head, or the sigmoid focal loss of the focal head; `loss_vfl` for the
    varifocal sigmoid head, `loss_mal` for the MAL one), `loss_bbox`,
    `loss_giou` (weighted by `weight_dict` into the total), the logging-only `class_error` and
    `cardinality_error`, and for each auxiliary decoder layer i the three losses and the
    cardinality error suffixed `_i`. With "pred_masks" in the outputs (the segmentation model), also `loss_mask`
    and `loss_dice` of the last layer's matched masks (`loss.masks`). Box and varifocal losses are averaged over the number of
    target boxes across all processes, the focal loss as the official Conditional DETR: its mean over
    queries, summed, divided by the number of target boxes and multiplied by the number of queries.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, class_loss: str = "softmax", focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, mal_gamma: float = 1.5, k_one2many: int = 0):
        super().__init__()
        check_choice(class_loss, ClassLoss, "class_loss")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.class_loss, self.focal_alpha, self.focal_gamma = class_loss, focal_alpha, focal_gamma
        self.mal_gamma, self.k_one2many = mal_gamma, k_one2many
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef  # down-weight the many "no object" queries
        self.register_buffer("class_weight", class_weight)

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The loss dict; with Group DETR's "groups", each group is matched on its own and every term is
        the mean over the groups that have it (only the first group has masks)."""
        _check_targets(targets, len(outputs["pred_logits"]), self.num_classes)
        logits = outputs["pred_logits"]
        num_boxes = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=logits.device)
        num_boxes = mean_across_processes(num_boxes).clamp(min=1).item()
        groups = [self._group_losses(g, targets, num_boxes) for g in [outputs, *outputs.get("groups", [])]]
        if len(groups) == 1:
            return groups[0]
        return {k: torch.stack([g[k] for g in groups if k in g]).mean() for k in groups[0]}

    def _group_losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]],
                      num_boxes: float) -> dict[str, Tensor]:
        """The losses of one query group, auxiliary decoder layers included, and of its denoising queries
        (suffixed `_dn`): each reconstructs the ground truth it was made from, no matching needed. With
        `k_one2many` K > 0 also the one-to-many losses (suffixed `_o2m`) of the same outputs."""
        losses = self._layer_losses(outputs, targets, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            layer = self._layer_losses(aux, targets, num_boxes, log=False)
            losses.update({k + aux_suffix(i): v for k, v in layer.items()})
        if self.k_one2many > 0:
            losses.update(self._one2many_losses(outputs, targets, num_boxes))
        if "dn" in outputs:
            dn, noised = outputs["dn"], outputs["dn"]["targets"]
            indices = [(torch.nonzero(valid).flatten(), torch.nonzero(valid).flatten() % noised.group_size)
                       for valid in noised.valid]  # slot g * size + j reconstructs target j
            for suffix, layer in [("", dn), *[(aux_suffix(i), a) for i, a in enumerate(dn.get("aux_outputs", []))]]:
                part = self._layer_losses(layer, targets, num_boxes * noised.groups, log=False, indices=indices)
                losses.update({f"{k}_dn{suffix}": v for k, v in part.items() if k != "cardinality_error"})
        return losses

    def _one2many_losses(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]],
                         num_boxes: float) -> dict[str, Tensor]:
        """MS-DETR's one-to-many supervision of the primary queries (arXiv 2401.03989): every decoder layer's
        outputs matched again to K copies of the ground truth (up to K queries per object), averaged over the
        K * N boxes. Chosen over H-DETR's extra query branch: no extra queries to decode, nothing to drop."""
        losses = {}
        aux = [(aux_suffix(i), a) for i, a in enumerate(outputs.get("aux_outputs", []))]
        for suffix, layer in [("", outputs), *aux]:
            indices = self.matcher(layer, targets, repeats=self.k_one2many)
            part = self._layer_losses(layer, targets, num_boxes * self.k_one2many, log=False, indices=indices)
            losses.update({f"{k}_o2m{suffix}": v for k, v in part.items() if k in self.base_terms})
        return losses

    @property
    def base_terms(self) -> tuple[str, ...]:
        """The names of the class, L1 and GIoU terms of one layer."""
        return CLASS_LOSS_TERMS[self.class_loss], "loss_bbox", "loss_giou"

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)  # type: ignore[return-value]

    def _layer_losses(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], num_boxes: float,
                      log: bool, indices: list[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        """One decoder layer's losses; `indices` (query, target) per image, else the matcher's."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        logits = outputs["pred_logits"]  # [B, Q, C+1], or [B, Q, C] for the varifocal head
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        src_boxes = outputs["pred_boxes"][batch_idx, query_idx]  # [N, 4]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src_boxes)  # [N, 4]
        if self.class_loss in ("varifocal", "mal"):
            ious = box_iou_pairs(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes))
            losses = ({"loss_vfl": varifocal_loss(logits, (batch_idx, query_idx), matched_labels, ious, num_boxes,
                                                  self.focal_alpha, self.focal_gamma)} if self.class_loss == "varifocal"
                      else {"loss_mal": mal_loss(logits, (batch_idx, query_idx), matched_labels, ious, num_boxes,
                                                 self.mal_gamma)})
        elif self.class_loss == "focal":
            losses = {"loss_ce": sigmoid_focal_loss(logits, (batch_idx, query_idx), matched_labels, num_boxes,
                                                    self.focal_alpha, self.focal_gamma)}
        else:
            target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target_classes[batch_idx, query_idx] = matched_labels
            losses = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes,
                                                 self.class_weight.to(logits.dtype))}
        losses["loss_bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = elementwise_giou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes))
        losses["loss_giou"] = (1 - giou).sum() / num_boxes
        losses["cardinality_error"] = _cardinality_error(logits, targets, self.class_loss in SIGMOID_HEADS)
        if log:
            losses["class_error"] = _class_error(logits[batch_idx, query_idx], matched_labels)
        if "pred_masks" in outputs:
            losses.update(mask_losses(outputs["pred_masks"], targets, indices, num_boxes))
        return losses


@torch.no_grad()
def _class_error(matched_logits: Tensor, matched_labels: Tensor) -> Tensor:
    """% of matched queries whose top class is wrong (100 with no target, as the official code logs)."""
    if matched_labels.numel() == 0:
        return torch.full((), 100.0, device=matched_logits.device)
    correct = matched_logits.argmax(-1) == matched_labels.to(matched_logits.device)
    return 100.0 - 100.0 * correct.float().mean()


@torch.no_grad()
def _cardinality_error(logits: Tensor, targets: list[dict[str, Tensor]], sigmoid: bool = False) -> Tensor:
    """Mean |#predictions that are objects - #targets| per image; logging only. An object: a best class
    that is not "no object" (softmax head), or a best score above 0.5 (sigmoid head)."""
    if sigmoid:
        num_pred = (logits.max(-1).values > 0).sum(1).float()  # [B]
    else:
        num_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()  # [B]
    num_tgt = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
    return F.l1_loss(num_pred, num_tgt)


def _check_targets(targets: list[dict[str, Tensor]], batch_size: int, num_classes: int) -> None:
    if len(targets) != batch_size:
        raise ValueError(f"targets: expected {batch_size} target dicts (one per image), got {len(targets)}")
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}]: needs 'labels' [N] and 'boxes' [N, 4] (cxcywh in [0, 1])")
        if t["boxes"].shape != (len(t["labels"]), 4):
            raise ValueError(f"targets[{i}]: boxes of shape {tuple(t['boxes'].shape)} do not match "
                             f"{len(t['labels'])} labels")
        if len(t["labels"]) and (t["labels"].min() < 0 or t["labels"].max() >= num_classes):
            raise ValueError(f"targets[{i}]: labels must be in [0, {num_classes - 1}], got "
                             f"{t['labels'].min().item()}..{t['labels'].max().item()}")


def create_criterion(num_classes: int = 91, dec_layers: int = 6, aux_loss: bool = True, class_loss: str = "softmax",
                     denoising: bool = False, masks: bool = False, **overrides: Any) -> SetCriterion:
    """Create the set criterion with the paper's matcher costs and loss weights.

    Args:
        num_classes: as given to `create_model`.
        dec_layers, aux_loss, class_loss: as the model's; they decide which losses are weighted, and
            the sigmoid heads ("varifocal", "focal") use the focal class cost in the matcher.
        denoising: the model has denoising queries (dn_number > 0): their `_dn` losses are weighted too.
        masks: the model has the mask head: `loss_mask` and `loss_dice` are weighted too.
        **overrides: set_cost_class, set_cost_bbox, set_cost_giou, cls_loss_coef, bbox_loss_coef, giou_loss_coef,
            eos_coef, focal_alpha, focal_gamma, mal_gamma, matcher_iou_power, k_one2many, one2many_loss_coef,
            mask_loss_coef, dice_loss_coef. set_cost_class and cls_loss_coef default to the class head's
            published value (`config.CLASS_LOSS_DEFAULTS`: 2 for "focal", as Conditional DETR; else 1).

    Example:
        >>> criterion = create_criterion(num_classes=91)
        >>> losses = criterion(model(images), targets)
        >>> criterion.total_loss(losses).backward()
    """
    cfg: LossConfig = dataclass_from_dict(LossConfig, overrides, where="create_criterion")
    focal = check_choice(class_loss, ClassLoss, "class_loss") in SIGMOID_HEADS
    cost_class = CLASS_LOSS_DEFAULTS[class_loss] if cfg.set_cost_class is None else cfg.set_cost_class
    cls_loss_coef = CLASS_LOSS_DEFAULTS[class_loss] if cfg.cls_loss_coef is None else cfg.cls_loss_coef
    matcher = HungarianMatcher(cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, focal, cfg.focal_alpha,
                               cfg.focal_gamma, cfg.matcher_iou_power)
    if cfg.k_one2many < 0:
        raise ValueError(f"k_one2many must be >= 0 (0: no one-to-many loss), got {cfg.k_one2many}")
    weights = build_weight_dict(cfg.bbox_loss_coef, cfg.giou_loss_coef, dec_layers - 1 if aux_loss else 0,
                                class_loss, denoising, cls_loss_coef,
                                (cfg.mask_loss_coef, cfg.dice_loss_coef) if masks else None,
                                cfg.one2many_loss_coef if cfg.k_one2many > 0 else 0.0)
    return SetCriterion(num_classes, matcher, weights, cfg.eos_coef, class_loss, cfg.focal_alpha, cfg.focal_gamma,
                        cfg.mal_gamma, cfg.k_one2many)
