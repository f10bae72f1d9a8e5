"""The official DETR code (registry package detr==0.1.4), installed apart and imported for side-by-side tests.

It installs top-level packages `models`, `util` and `datasets`, so it lives in its own folder
(never in the project's environment) and is put on sys.path only by these tests. Two things
are neutralised from outside, without editing its files:
- `float(torchvision.__version__[:3]) < 0.7` (reads "0.29.1" as 0.2) at import time;
- the ImageNet download its backbone asks for when `is_main_process()` is true.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import torch
import torchvision

REFERENCE_VERSION = "0.1.4"
REFERENCE_DIR = Path(os.environ.get("DETR_REFERENCE_DIR", Path(__file__).resolve().parents[1] / ".reference"))


def ensure_installed() -> Path:
    """Install the official code into REFERENCE_DIR if it is not there yet (registry only, no deps)."""
    target = REFERENCE_DIR / f"detr-{REFERENCE_VERSION}"
    if not (target / "models" / "detr.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"detr=={REFERENCE_VERSION}"], check=True)
    return target


def load() -> types.SimpleNamespace:
    """Import the official modules and return them as a namespace."""
    target = str(ensure_installed())
    if target not in sys.path:
        sys.path.insert(0, target)
    real_version = torchvision.__version__
    torchvision.__version__ = "0.99"  # only for the import-time version check
    try:
        import models.backbone as backbone
        import models.detr as detr
        import models.matcher as matcher
        import models.position_encoding as position_encoding
        import models.transformer as transformer
    finally:
        torchvision.__version__ = real_version
    backbone.is_main_process = lambda: False  # never download ImageNet weights
    return types.SimpleNamespace(backbone=backbone, detr=detr, matcher=matcher,
                                 position_encoding=position_encoding, transformer=transformer)


def build_model(ref: types.SimpleNamespace, *, num_classes: int = 91, backbone: str = "resnet50",
                dilation: bool = False, position_embedding: str = "sine", hidden_dim: int = 256, nheads: int = 8,
                enc_layers: int = 6, dec_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                num_queries: int = 100, pre_norm: bool = False, aux_loss: bool = True,
                lr_backbone: float = 1e-5) -> torch.nn.Module:
    """The official model, built from its own classes with the given flags."""
    args = types.SimpleNamespace(hidden_dim=hidden_dim, position_embedding=position_embedding,
                                 lr_backbone=lr_backbone, masks=False, backbone=backbone, dilation=dilation,
                                 dropout=dropout, nheads=nheads, dim_feedforward=dim_feedforward,
                                 enc_layers=enc_layers, dec_layers=dec_layers, pre_norm=pre_norm)
    return ref.detr.DETR(ref.backbone.build_backbone(args), ref.transformer.build_transformer(args),
                         num_classes=num_classes, num_queries=num_queries, aux_loss=aux_loss)


def build_criterion(ref: types.SimpleNamespace, *, num_classes: int = 91, dec_layers: int = 6,
                    aux_loss: bool = True, set_cost_class: float = 1, set_cost_bbox: float = 5,
                    set_cost_giou: float = 2, bbox_loss_coef: float = 5, giou_loss_coef: float = 2,
                    eos_coef: float = 0.1) -> torch.nn.Module:
    """The official SetCriterion with its HungarianMatcher and weight dict."""
    matcher = ref.matcher.HungarianMatcher(set_cost_class, set_cost_bbox, set_cost_giou)
    weight_dict = {"loss_ce": 1, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    if aux_loss:
        for i in range(dec_layers - 1):
            weight_dict.update({f"loss_ce_{i}": 1, f"loss_bbox_{i}": bbox_loss_coef,
                                f"loss_giou_{i}": giou_loss_coef})
    return ref.detr.SetCriterion(num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=eos_coef,
                                 losses=["labels", "boxes", "cardinality"])
