"""The architecture a `--weights` source brings to fine-tuning, read without loading its tensors.

Our checkpoints carry their Config, a transformers folder its config.json, a published name its entry in
`registry.MODELS`: fine-tuning any of them needs no architecture flag. Official files say nothing beyond their
shapes, which only loading reads; for those (and anything unreadable here) the flags decide, as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import first_line
from ..registry import MODELS, PUBLISHED

log = logging.getLogger(__name__)

# The ModelConfig fields that make the network a checkpoint's weights fit. The class count comes from the data,
# and training-only options (query groups, denoising, dropout) from the run.
ARCHITECTURE_FIELDS = ("family", "backbone", "dilation", "position_embedding", "hidden_dim", "nheads", "enc_layers",
                       "dec_layers", "dim_feedforward", "num_queries", "pre_norm", "class_loss")
# transformers' config.json names -> ours.
_HF_NAMES = {"d_model": "hidden_dim", "encoder_attention_heads": "nheads", "encoder_layers": "enc_layers",
             "decoder_layers": "dec_layers", "encoder_ffn_dim": "dim_feedforward", "num_queries": "num_queries",
             "position_embedding_type": "position_embedding"}
_HF_RESNETS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}  # backbone_config depths


def architecture_of(weights: str | os.PathLike) -> dict[str, Any]:
    """The architecture options (ModelConfig field names) that `weights` fixes: from our checkpoint's saved
    Config, a transformers folder's config.json or a published name; {} when it cannot be told without loading
    the weights (official files: their shapes decide when they load)."""
    name = str(weights)
    if name in PUBLISHED:
        return _known(MODELS[PUBLISHED[name].architecture])
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return _from_hf_config(path / "config.json")
    if path.is_file():
        saved = _saved_config(path)
        if isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping):
            return _known(saved["model"])
    return {}


def _known(values: Mapping[str, Any]) -> dict[str, Any]:
    arch = {k: values[k] for k in ARCHITECTURE_FIELDS if k in values}
    if arch.get("backbone") == "tiny":  # the tiny trunk has no pretrained weights to start from
        arch["backbone_weights"] = "none"
    return arch


def _saved_config(path: Path) -> Any:
    """The Config dict saved in our `.pth` / `.safetensors` file, read without its tensors (None if none)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return json.loads((f.metadata() or {}).get("config", "null"))
        # mmap: the pickle is read, the tensors are not; loading proper (and its errors) comes later
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # unreadable here: loading names the problem later
        log.debug("%s: no saved config read (%s)", path, first_line(e))
        return None
    return ckpt.get("config") if isinstance(ckpt, Mapping) else None


def _from_hf_config(path: Path) -> dict[str, Any]:
    """Architecture options from a transformers DETR / Conditional DETR config.json."""
    try:
        hf = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # loading names the problem
    if not isinstance(hf, Mapping) or hf.get("model_type") not in ("detr", "conditional_detr"):
        return {}
    arch: dict[str, Any] = {"family": hf["model_type"]}
    arch.update({ours: hf[theirs] for theirs, ours in _HF_NAMES.items() if theirs in hf})
    if hf["model_type"] == "conditional_detr":
        arch["class_loss"] = MODELS["conditional_detr_r50"]["class_loss"]
    backbone = hf.get("backbone_config") if isinstance(hf.get("backbone_config"), Mapping) else {}
    depths = tuple(backbone.get("depths") or ())
    if depths in _HF_RESNETS:
        arch["backbone"] = _HF_RESNETS[depths]
    elif hf.get("backbone") in ("resnet50", "resnet101"):
        arch["backbone"] = hf["backbone"]
    if hf.get("dilation") or backbone.get("output_stride") == 16:
        arch["dilation"] = True
    return arch
