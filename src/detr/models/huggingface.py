"""HuggingFace transformers weights -> this package's (official) parameter names.

`convert_hf_state_dict` undoes transformers' conversion scripts for `DetrForObjectDetection` and
`ConditionalDetrForObjectDetection`. It reads every spelling transformers has used:

- the hub layout that `save_pretrained` writes (and 4.x kept in memory): `model.backbone.conv_encoder.model.*`,
  `self_attn.out_proj`, `fc1`, and Conditional DETR's `ca_qcontent_proj`, `sa_v_proj`, `encoder_attn.out_proj`;
- 5.x in-memory names: `model.backbone.model.*`, `o_proj`, `mlp.fc1`, `self_attn.q_content_proj`,
  `encoder_attn.q_pos_sine_proj`;
- both backbone layouts: timm's (`conv1`, `layer1.0.bn1`, `downsample.0`: torchvision's names) and
  transformers' own ResNet (`embedder.embedder.convolution`, `encoder.stages.0.layers.0.layer.0`).

DETR's separate q/k/v projections are joined into `in_proj_weight` / `in_proj_bias` (nn.MultiheadAttention's layout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..registry import config_from_checkpoint

_FAMILIES = {"detr": "detr", "conditional_detr": "conditional_detr"}  # transformers' model_type -> ours

# Spellings of one name -> the hub layout's, applied in order to keys without the leading "model.".
_UNIFY = [
    (r"^backbone\.conv_encoder\.model\.", "trunk."), (r"^backbone\.model\.", "trunk."),
    (r"^backbone\.conv_encoder\.", "trunk."),
    (r"^backbone\.position_embedding\.", "position."), (r"^position_embedding\.", "position."),
    (r"\.o_proj\.", ".out_proj."), (r"\.mlp\.fc([12])\.", r".fc\1."),
    # Conditional DETR's decoder projections: 5.x module paths -> the flat official-like names
    (r"(decoder\.layers\.\d+)\.self_attn\.([qk])_(content|pos)_proj\.", r"\1.sa_\2\3_proj."),
    (r"(decoder\.layers\.\d+)\.encoder_attn\.([qk])_(content|pos)_proj\.", r"\1.ca_\2\3_proj."),
    (r"(decoder\.layers\.\d+)\.encoder_attn\.q_pos_sine_proj\.", r"\1.ca_qpos_sine_proj."),
]
_CONDITIONAL_VALUES = [(r"(decoder\.layers\.\d+)\.self_attn\.v_proj\.", r"\1.sa_v_proj."),
                       (r"(decoder\.layers\.\d+)\.encoder_attn\.v_proj\.", r"\1.ca_v_proj.")]

# transformers' own ResNet -> torchvision's names (timm's already are torchvision's).
_RESNET = [
    (r"^trunk\.embedder\.embedder\.convolution\.", "trunk.conv1."),
    (r"^trunk\.embedder\.embedder\.normalization\.", "trunk.bn1."),
    (r"^trunk\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"trunk.layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^trunk\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"trunk.layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^trunk\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
     lambda m: f"trunk.layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^trunk\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
     lambda m: f"trunk.layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
]

# The hub layout -> the official names.
_OFFICIAL = [
    (r"^trunk\.", "backbone.0.body."),
    (r"^position\.row_embeddings\.", "backbone.1.row_embed."), (r"^position\.column_embeddings\.", "backbone.1.col_embed."),
    (r"^query_position_embeddings\.", "query_embed."), (r"^input_projection\.", "input_proj."),
    (r"^class_labels_classifier\.", "class_embed."), (r"^bbox_predictor\.", "bbox_embed."),
    (r"^decoder\.layernorm\.", "transformer.decoder.norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^(en|de)coder\.layers\.(\d+)\.fc([12])\.", r"transformer.\1coder.layers.\2.linear\3."),
    (r"^decoder\.", "transformer.decoder."), (r"^encoder\.", "transformer.encoder."),
]


def _rename(key: str, rules: list[tuple[str, Any]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _config_dict(hf_config: Any) -> dict[str, Any]:
    """A transformers config object, or its config.json as a dict, as a plain dict."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"hf_config: expected a transformers DetrConfig / ConditionalDetrConfig or its config.json "
                    f"as a dict, got {type(hf_config).__name__}")


def _join_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """DETR's `{q,k,v}_proj` of each attention -> `in_proj_weight` / `in_proj_bias` (q, k, v stacked)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.match(r"^(.*)\.q_proj\.(weight|bias)$", key)
        if m is None:
            if not re.match(r"^.*\.[kv]_proj\.(weight|bias)$", key):
                out[key] = value
            continue
        prefix, kind = m[1], m[2]
        parts = [state.get(f"{prefix}.{p}_proj.{kind}") for p in "qkv"]
        if any(p is None for p in parts):
            raise ValueError(f"hf_state_dict: {prefix} has q_proj but not both k_proj and v_proj")
        out[f"{prefix}.in_proj_{kind}"] = torch.cat(parts)  # type: ignore[arg-type]
    return out


def convert_hf_state_dict(hf_state_dict: Mapping[str, Tensor], hf_config: Any) -> tuple[dict[str, Tensor], ModelConfig]:
    """Map a transformers DETR or Conditional DETR state dict to this package's names, with its ModelConfig.

    Args:
        hf_state_dict: `model.state_dict()` of a `DetrForObjectDetection` / `ConditionalDetrForObjectDetection`
            (5.x names), or a `model.safetensors` written by `save_pretrained` (hub layout, 4.x names).
        hf_config: the model's config (object, or config.json as a dict): it says the family (`model_type`),
            heads, dilation and dropout, which the weights' shapes do not.

    Returns:
        The state dict (loads strictly into `build_model(model_config)`) and the ModelConfig.

    Raises:
        ValueError: an unsupported model type, or keys that cannot be mapped.
    """
    cfg = _config_dict(hf_config)
    family = _FAMILIES.get(cfg.get("model_type", ""))
    if family is None:
        raise ValueError(f"hf_config: model_type {cfg.get('model_type')!r} is not supported; expected one of "
                         f"{sorted(_FAMILIES)}")
    rules = _UNIFY + (_CONDITIONAL_VALUES if family == "conditional_detr" else []) + _RESNET
    state: dict[str, Tensor] = {}
    for key, value in hf_state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        state[_rename(_rename(re.sub(r"^model\.", "", key), rules), _OFFICIAL)] = value
    cross = "multihead_attn" if family == "detr" else "cross_attn"  # the decoder's cross-attention, officially
    state = _join_qkv({k.replace(".encoder_attn.", f".{cross}."): v for k, v in state.items()})
    told = {"nheads": cfg.get("encoder_attention_heads", ModelConfig.nheads), "dilation": bool(cfg.get("dilation")),
            "dropout": cfg.get("dropout", ModelConfig.dropout)}
    if "attention_dropout" in cfg and cfg["attention_dropout"] != told["dropout"]:
        told["attention_dropout"] = cfg["attention_dropout"]
    model_cfg = config_from_checkpoint({"model": state}, f"transformers {cfg['model_type']} weights", **told).model
    return state, model_cfg
