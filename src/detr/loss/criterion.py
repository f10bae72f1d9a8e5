"""DETR's set loss: Hungarian matching, then class, L1 and GIoU losses on matched pairs."""

from __future__ import annotations

from collections.abc import Callable
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
from .focal import focal_terms, mal_terms, one_hot, varifocal_terms
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
        groups = [outputs, *outputs.get("groups", [])]
        # every decoder layer of every group, computed together: a few large operations instead of many small ones
        sets = [x for g in groups for x in (*g.get("aux_outputs", []), g)]  # [G*L], group-major: layers 0..L-1
        terms, indices = self._set_losses(sets, targets, num_boxes)
        class_error = terms.pop("class_error").view(len(groups), -1)[:, -1].mean()  # last layers only, as logged
        losses = {**_by_layer(terms, len(groups)), "class_error": class_error}
        if "pred_masks" in outputs:  # the first group's last layer: sets[L-1]
            last = len(outputs.get("aux_outputs", []))
            losses.update(mask_losses(outputs["pred_masks"], targets, indices[last], num_boxes))
        if self.k_one2many > 0:
            losses.update(self._one2many_losses(sets, len(groups), targets, num_boxes))
        denoising = [self._denoising_losses(g["dn"], targets, num_boxes) for g in groups if "dn" in g]
        for k in denoising[0] if denoising else []:
            losses[k] = torch.stack([d[k] for d in denoising]).mean()
        return losses

    def _denoising_losses(self, dn: dict[str, Any], targets: list[dict[str, Tensor]],
                          num_boxes: float) -> dict[str, Tensor]:
        """The losses of one group's denoising queries (suffixed `_dn`): each reconstructs the ground truth it
        was made from, no matching needed."""
        noised = dn["targets"]
        indices = [(torch.nonzero(valid).flatten(), torch.nonzero(valid).flatten() % noised.group_size)
                   for valid in noised.valid]  # slot g * size + j reconstructs target j
        layers = [*dn.get("aux_outputs", []), dn]
        terms, _ = self._set_losses(layers, targets, num_boxes * noised.groups, [indices] * len(layers))
        return _by_layer({k: v for k, v in terms.items() if k in self.base_terms}, 1, "_dn")

    def _one2many_losses(self, layers: list[dict[str, Any]], groups: int, targets: list[dict[str, Tensor]],
                         num_boxes: float) -> dict[str, Tensor]:
        """MS-DETR's one-to-many supervision of the primary queries (arXiv 2401.03989): every decoder layer's
        outputs matched again to K copies of the ground truth (up to K queries per object), averaged over the
        K * N boxes (suffixed `_o2m`). Chosen over H-DETR's extra query branch: no extra queries to decode,
        nothing to drop."""
        terms, _ = self._set_losses(layers, targets, num_boxes * self.k_one2many, repeats=self.k_one2many)
        return _by_layer({k: v for k, v in terms.items() if k in self.base_terms}, groups, "_o2m")

    @property
    def base_terms(self) -> tuple[str, ...]:
        """The names of the class, L1 and GIoU terms of one layer."""
        return CLASS_LOSS_TERMS[self.class_loss], "loss_bbox", "loss_giou"

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)  # type: ignore[return-value]

    def _set_losses(self, sets: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], num_boxes: float,
                    indices: list[list[tuple[Tensor, Tensor]]] | None = None,
                    repeats: int = 1) -> tuple[dict[str, Tensor], list[list[tuple[Tensor, Tensor]]]]:
        """The losses of S prediction sets of the same shape (decoder layers, query groups), each against the
        targets on its own, computed side by side: every term (and "class_error") a [S] vector. `indices`:
        per set, (query, target) per image; else the matcher's (with `repeats`), which are returned too."""
        s, q = len(sets), sets[0]["pred_logits"].shape[1]
        logits = torch.cat([x["pred_logits"] for x in sets], 1)  # [B, S*Q, C+1], or [B, S*Q, C] (sigmoid head)
        boxes = torch.cat([x["pred_boxes"] for x in sets], 1)  # [B, S*Q, 4]
        if indices is None:
            indices = self.matcher.match_sets({"pred_logits": logits, "pred_boxes": boxes}, targets, s, repeats)
        image, query, which, labels, tgt_boxes = _matched_pairs(indices, targets, q, logits.device)
        tgt_boxes = tgt_boxes.to(boxes)
        src_boxes = boxes[image, query]  # [N, 4]

        def per_set(values: Tensor) -> Tensor:  # [N] -> [S] sums
            return values.new_zeros(s).index_add(0, which, values)

        per_query = logits.unflatten(1, (s, q))  # [B, S, Q, C(+1)]
        if self.class_loss in ("varifocal", "mal"):
            ious = box_iou_pairs(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes))
            elements = (varifocal_terms(logits, (image, query), labels, ious, self.focal_alpha, self.focal_gamma)
                        if self.class_loss == "varifocal" else
                        mal_terms(logits, (image, query), labels, ious, self.mal_gamma))
            class_terms = {CLASS_LOSS_TERMS[self.class_loss]: elements.unflatten(1, (s, q)).sum((0, 2, 3)) / num_boxes}
        elif self.class_loss == "focal":  # the official normalisation (`sigmoid_focal_loss`), per set
            elements = focal_terms(logits, one_hot(logits, (image, query), labels), self.focal_alpha, self.focal_gamma)
            class_terms = {"loss_ce": elements.unflatten(1, (s, q)).mean(2).sum((0, 2)) / num_boxes * q}
        else:  # cross-entropy weighted by class (eos_coef): a weighted mean per set
            target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target_classes[image, query] = labels
            weight = self.class_weight.to(logits.dtype)
            ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight, reduction="none")  # [B, S*Q]
            class_terms = {"loss_ce": ce.unflatten(1, (s, q)).sum((0, 2))
                           / weight[target_classes].unflatten(1, (s, q)).sum((0, 2))}
        giou = elementwise_giou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes))
        terms = {**class_terms, "loss_bbox": per_set((src_boxes - tgt_boxes).abs().sum(-1)) / num_boxes,
                 "loss_giou": per_set(1 - giou) / num_boxes,
                 "cardinality_error": _cardinality_error(per_query, targets, self.class_loss in SIGMOID_HEADS),
                 "class_error": _class_error(logits[image, query], labels, per_set)}
        return terms, indices


def _matched_pairs(indices: list[list[tuple[Tensor, Tensor]]], targets: list[dict[str, Tensor]], q: int,
                   device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The matched pairs of S sets side by side, each [N]: image, query (into the S*Q queries), set, target
    label, and target box [N, 4]."""
    pairs = [pair for per_set in indices for pair in per_set]  # (set s, image i) at s * B + i
    counts = torch.tensor([len(src) for src, _ in pairs], device=device)
    b = len(targets)
    image = torch.arange(b, device=device).repeat(len(indices)).repeat_interleave(counts)
    which = torch.arange(len(indices), device=device).repeat_interleave(b).repeat_interleave(counts)
    query = torch.cat([src for src, _ in pairs]).to(device) + which * q  # (the matcher's are on the CPU)
    sizes = torch.tensor([len(t["labels"]) for t in targets], device=device)
    first = sizes.cumsum(0) - sizes  # [B] where each image's targets start in the concatenation
    target = torch.cat([tgt for _, tgt in pairs]).to(device) + first[image]
    labels = torch.cat([t["labels"] for t in targets]).to(device)[target]
    boxes = torch.cat([t["boxes"] for t in targets]).to(device)[target]
    return image, query, which, labels, boxes


def _by_layer(terms: dict[str, Tensor], groups: int, tag: str = "") -> dict[str, Tensor]:
    """[G*L] terms (group-major, layer L-1 the last) -> each layer's mean over the groups, named `{term}{tag}` for
    the last layer and `{term}{tag}_{i}` for auxiliary layer i."""
    losses = {}
    for k, v in terms.items():
        per_layer = v.view(groups, -1).mean(0)  # [L]
        losses[k + tag] = per_layer[-1]
        losses.update({k + tag + aux_suffix(i): per_layer[i] for i in range(len(per_layer) - 1)})
    return losses


@torch.no_grad()
def _class_error(matched_logits: Tensor, labels: Tensor, per_set: Callable[[Tensor], Tensor]) -> Tensor:
    """% of each set's matched queries whose top class is wrong [S] (100 with no target, as the official code
    logs)."""
    counts = per_set(torch.ones_like(labels, dtype=matched_logits.dtype))
    correct = per_set((matched_logits.argmax(-1) == labels).to(matched_logits.dtype))
    return torch.where(counts > 0, 100.0 - 100.0 * correct / counts.clamp(min=1), 100.0)


@torch.no_grad()
def _cardinality_error(logits: Tensor, targets: list[dict[str, Tensor]], sigmoid: bool = False) -> Tensor:
    """Mean |#predictions that are objects - #targets| per image, of each set [S]; logging only. logits
    [B, S, Q, C]. An object: a best class that is not "no object" (softmax head), or a best score above 0.5
    (sigmoid head)."""
    if sigmoid:
        num_pred = (logits.max(-1).values > 0).sum(2).float()  # [B, S]
    else:
        num_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(2).float()  # [B, S]
    num_tgt = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
    return (num_pred - num_tgt[:, None]).abs().mean(0)


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
