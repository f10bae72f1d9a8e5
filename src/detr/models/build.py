"""`create_model` and `build_model`: one entry point for every model family (DETR, Conditional DETR), with or
without the mask head (models/segmentation.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..config import FAMILIES, ClassLoss, ModelConfig, check_choice
from ..registry import MODELS, model_config
from .conditional import ConditionalDETR, build_conditional
from .detr import DETR, build_detr
from .segmentation import DETRsegm

Model = DETR | ConditionalDETR | DETRsegm  # what build_model returns: all share the output contract of DETR.forward

_BUILDERS = {"detr": build_detr, "conditional_detr": build_conditional}


def build_model(cfg: ModelConfig) -> Model:
    """Build the model of `cfg.family` from a ModelConfig; with `cfg.masks`, wrapped in the mask head (`DETRsegm`)."""
    if cfg.family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {cfg.family!r}")
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {cfg.num_queries}")
    check_choice(cfg.class_loss, ClassLoss, "class_loss")
    if cfg.box_rpb and cfg.family != "detr":
        raise ValueError(f"box_rpb: BoxRPB is for plain DETR's global cross-attention, not {cfg.family} (whose "
                         "conditional spatial queries cover that ground); drop --box_rpb")
    detector = _BUILDERS[cfg.family](cfg)
    return DETRsegm(detector, cfg.nheads) if cfg.masks else detector


# Parameters used only in training (Group DETR's extra queries, the denoising embeddings): kept in training checkpoints so
# that --resume is exact, dropped when a model is loaded for inference.
# The "detr." copies are the same parameters inside a segmentation model.
TRAINING_ONLY = ("group_query_embed.", "denoising.", "detr.group_query_embed.", "detr.denoising.")


def inference_parts(cfg: ModelConfig, state_dict: Mapping[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The config and weights of the inference model of a (possibly recipe-trained) checkpoint."""
    state = {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY)}
    return dataclasses.replace(cfg, num_groups=1, dn_number=0), state


def create_model(name: str = "detr_r50", num_classes: int | None = None, **overrides: Any) -> Model:
    """Create a randomly initialised model by name.

    Args:
        name: one of `list_models()`: detr_r50, detr_r50_dc5, detr_r101, detr_r101_dc5 and the
            Conditional DETR models conditional_detr_r50, conditional_detr_r50_dc5, conditional_detr_r101,
            conditional_detr_r101_dc5 (300 queries, sigmoid focal class head), and the panoptic models
            detr_r50_panoptic, detr_r50_dc5_panoptic, detr_r101_panoptic (DETR with the mask head).
        num_classes: number of object classes (COCO uses 91, the largest category id + 1; a softmax
            head has num_classes + 1 outputs, a sigmoid head num_classes). None: the model's default
            (250 for the panoptic models, as COCO panoptic's largest category id + 1 rounded up; else 91).
        **overrides: official flag names, e.g. hidden_dim, nheads, enc_layers, dec_layers,
            dim_feedforward, dropout, num_queries, pre_norm, aux_loss, position_embedding,
            backbone, dilation, lr_backbone, class_loss, masks (the mask head on any model).

    Example:
        >>> model = create_model("conditional_detr_r50", num_classes=91).eval()
        >>> out = model([torch.rand(3, 480, 640)])
        >>> out["pred_boxes"].shape
        torch.Size([1, 300, 4])
    """
    return build_model(model_config(name, num_classes, **overrides))


def list_models() -> list[str]:
    """The names `create_model` accepts."""
    return list(MODELS)
