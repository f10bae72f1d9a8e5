"""Our (official) names -> a transformers checkpoint folder: config.json, model.safetensors and
preprocessor_config.json, which transformers' `from_pretrained` loads with no missing or unexpected key.

`to_hf_state_dict` and `hf_config` give the hub layout and the config.json; `save_hf_folder` writes the files and
checks that `from_hf.py` reads them back as the model written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import atomic_write, output_folder, write_json
from ..config import ModelConfig
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .from_hf import HF_RESNETS, convert_hf_state_dict, rename_key

log = logging.getLogger(__name__)

_ARCHITECTURES = {"detr": "DetrForObjectDetection", "conditional_detr": "ConditionalDetrForObjectDetection"}
_HEADS = {"detr": "softmax", "conditional_detr": "focal"}  # the class head each transformers model has

_TRUNK = "model.backbone.conv_encoder.model."
# The inverse of _OFFICIAL (5.x writes the learned position embedding at model.position_embedding).
_TO_HUB = [
    (r"^backbone\.0\.body\.", _TRUNK),
    (r"^backbone\.1\.row_embed\.", "model.position_embedding.row_embeddings."),
    (r"^backbone\.1\.col_embed\.", "model.position_embedding.column_embeddings."),
    (r"^query_embed\.", "model.query_position_embeddings."), (r"^input_proj\.", "model.input_projection."),
    (r"^class_embed\.", "class_labels_classifier."), (r"^bbox_embed\.", "bbox_predictor."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layernorm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"model.encoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"model.encoder.layers.\1.final_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"^transformer\.(en|de)coder\.layers\.(\d+)\.linear([12])\.", r"model.\1coder.layers.\2.fc\3."),
    (r"\.(multihead_attn|cross_attn)\.", ".encoder_attn."),
    (r"^transformer\.", "model."),
]
# The inverse of _RESNET: torchvision's names -> transformers' own ResNet.
_TO_HF_RESNET = [
    (rf"^{re.escape(_TRUNK)}conv1\.", _TRUNK + "embedder.embedder.convolution."),
    (rf"^{re.escape(_TRUNK)}bn1\.", _TRUNK + "embedder.embedder.normalization."),
    (rf"^{re.escape(_TRUNK)}layer(\d+)\.(\d+)\.downsample\.([01])\.",
     lambda m: f"{_TRUNK}encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut."
               + ("convolution." if m[3] == "0" else "normalization.")),
    (rf"^{re.escape(_TRUNK)}layer(\d+)\.(\d+)\.(conv|bn)(\d)\.",
     lambda m: f"{_TRUNK}encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[4]) - 1}."
               + ("convolution." if m[3] == "conv" else "normalization.")),
]


def check_hf_exportable(model_cfg: ModelConfig) -> None:
    """A ValueError listing what transformers' DETR / Conditional DETR cannot represent in `model_cfg`."""
    family = model_cfg.family
    problems = []
    if family not in _ARCHITECTURES:
        problems.append(f"family {family!r} has no transformers counterpart")
    elif model_cfg.class_loss != _HEADS[family]:
        problems.append(f"class_loss {model_cfg.class_loss!r}: transformers' {_ARCHITECTURES[family]} has the "
                        f"{_HEADS[family]} class head")
    if model_cfg.backbone not in HF_RESNETS:
        problems.append(f"backbone {model_cfg.backbone!r}: transformers' DETR takes one of {', '.join(HF_RESNETS)}")
    if model_cfg.pre_norm:
        problems.append("pre_norm: transformers' DETR transformer is post-norm only")
    if model_cfg.box_rpb:
        problems.append("box_rpb: transformers' DETR has no box-to-pixel attention bias")
    if problems:
        raise ValueError("cannot be written as a transformers model: " + "; ".join(problems))


def uses_timm_backbone(model_cfg: ModelConfig) -> bool:
    """DC5 needs timm's ResNet (`output_stride` 16) in transformers: its own ResNet has no dilation."""
    return model_cfg.dilation


def to_hf_state_dict(state_dict: Mapping[str, Tensor], model_cfg: ModelConfig) -> dict[str, Tensor]:
    """Our (official) names -> the hub layout of transformers' model for `model_cfg` (`save_pretrained`'s names).

    `in_proj_weight` / `in_proj_bias` are split into `q_proj`, `k_proj`, `v_proj`; the backbone keeps
    torchvision's names (timm's) for DC5, else takes transformers' own ResNet names.
    """
    check_hf_exportable(model_cfg)
    rules = _TO_HUB + ([] if uses_timm_backbone(model_cfg) else _TO_HF_RESNET)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
        if m is None:
            out[rename_key(key, rules)] = value
            continue
        prefix = rename_key(m[1] + ".", rules)  # [3E, E] or [3E] -> q, k, v
        for part, chunk in zip("qkv", value.chunk(3)):
            out[f"{prefix}{part}_proj.{m[2]}"] = chunk
    return out


def hf_config(model_cfg: ModelConfig, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """transformers' config.json for `model_cfg`.

    `auxiliary_loss` is False: with it, transformers' decoder feeds each layer's LayerNorm'd output to the next
    layer, which the official decoder (ours) does not. `use_pretrained_backbone` is False so that loading
    downloads nothing. `class_names` (indexed by class id) become `id2label`; None: LABEL_0, LABEL_1, ...
    """
    check_hf_exportable(model_cfg)
    m = model_cfg
    names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(m.num_classes)]
    if len(names) != m.num_classes:
        raise ValueError(f"class_names: {len(names)} names for a model of {m.num_classes} classes")
    depths, block = HF_RESNETS[m.backbone]
    widths = [256, 512, 1024, 2048] if block == "bottleneck" else [64, 128, 256, 512]
    backbone: dict[str, Any] = {"use_timm_backbone": True, "backbone": m.backbone, "backbone_config": None}
    if not uses_timm_backbone(m):
        backbone = {"use_timm_backbone": False, "backbone": None, "backbone_config": {
            "model_type": "resnet", "num_channels": 3, "embedding_size": 64, "hidden_sizes": widths,
            "depths": depths, "layer_type": block, "hidden_act": "relu", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False, "out_features": ["stage4"]}}
    attention_dropout = m.dropout if m.attention_dropout is None else m.attention_dropout
    return {
        "architectures": [_ARCHITECTURES[m.family]], "model_type": m.family, **backbone,
        "use_pretrained_backbone": False, "dilation": m.dilation, "num_channels": 3,
        "num_queries": m.num_queries, "d_model": m.hidden_dim,
        "encoder_layers": m.enc_layers, "decoder_layers": m.dec_layers,
        "encoder_attention_heads": m.nheads, "decoder_attention_heads": m.nheads,
        "encoder_ffn_dim": m.dim_feedforward, "decoder_ffn_dim": m.dim_feedforward,
        # the official dropouts: after attention and FFN, on attention weights, and inside the FFN
        "dropout": m.dropout, "attention_dropout": attention_dropout, "activation_dropout": m.dropout,
        "activation_function": "relu", "position_embedding_type": m.position_embedding, "auxiliary_loss": False,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def _preprocessor_config(family: str, size: int, max_size: int) -> dict[str, Any]:
    """transformers' image processor doing our evaluation preprocessing (resize, ImageNet normalisation, pad)."""
    return {"image_processor_type": "DetrImageProcessor" if family == "detr" else "ConditionalDetrImageProcessor",
            "format": "coco_detection", "do_resize": True, "size": {"shortest_edge": size, "longest_edge": max_size},
            "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "do_pad": True,
            "do_convert_annotations": True}


def save_hf_folder(folder: str | Path, state_dict: Mapping[str, Tensor], model_cfg: ModelConfig,
                   class_names: Sequence[str] | None = None, size: int = 800, max_size: int = 1333,
                   argument: str = "folder") -> Path:
    """Write a transformers checkpoint folder: config.json, model.safetensors and preprocessor_config.json.

    `transformers.DetrForObjectDetection.from_pretrained(folder)` (ConditionalDetrForObjectDetection for the
    Conditional DETR family) loads it with no missing or unexpected key. DC5 models are written with timm's
    backbone (as facebook/detr-resnet-50-dc5 is), which transformers needs the `timm` package to build.

    Args:
        folder: where to write (created if needed; files of the same names are replaced).
        state_dict: the inference model's weights (official names; no training-only parameters).
        model_cfg: its ModelConfig.
        class_names: names by class id, for `id2label`.
        size, max_size: the evaluation resize, for preprocessor_config.json.
        argument: what to call `folder` in error messages (e.g. the command line's OUT_DIR).

    Returns:
        The folder.

    Raises:
        ValueError: a model transformers cannot represent (`check_hf_exportable`), or an unusable folder.
    """
    from safetensors.torch import save_file

    hub = {k: v.detach().cpu().contiguous().clone() for k, v in to_hf_state_dict(state_dict, model_cfg).items()}
    config = hf_config(model_cfg, class_names)
    _check_inverse(hub, config, state_dict, model_cfg)
    out = output_folder(folder, argument)
    atomic_write(out / "model.safetensors", lambda tmp: save_file(hub, tmp, metadata={"format": "pt"}))
    write_json(out / "config.json", config, indent=2)
    write_json(out / "preprocessor_config.json", _preprocessor_config(model_cfg.family, size, max_size), indent=2)
    if uses_timm_backbone(model_cfg):
        log.info("%s: DC5 is written with timm's ResNet backbone; transformers needs `pip install timm` to load it", out)
    return out


def _check_inverse(hub: Mapping[str, Tensor], config: Mapping[str, Any], state_dict: Mapping[str, Tensor],
                   model_cfg: ModelConfig) -> None:
    """Reading back what is about to be written gives the same weights and architecture (the two mappings agree)."""
    back, back_cfg = convert_hf_state_dict(hub, config)
    own = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    fields = ("family", "backbone", "dilation", "hidden_dim", "nheads", "enc_layers", "dec_layers",
              "dim_feedforward", "num_queries", "num_classes", "position_embedding")
    same = back.keys() == own.keys() and all(torch.equal(back[k], own[k].cpu()) for k in own)
    if not same or any(getattr(back_cfg, f) != getattr(model_cfg, f) for f in fields):
        raise RuntimeError("internal error: the transformers layout does not read back as the model written "
                           f"(keys only here: {sorted(own.keys() - back.keys())[:5]}, only there: "
                           f"{sorted(back.keys() - own.keys())[:5]})")
