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

The other way, `to_hf_state_dict` and `hf_config` give the hub layout and the config.json that
`from_pretrained` of transformers 5.x loads with no missing or unexpected key (`hf_folder.py` writes and reads
the files).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..registry import config_from_checkpoint

FAMILIES = {"detr": "detr", "conditional_detr": "conditional_detr"}  # transformers' model_type -> ours

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


def convert_hf_state_dict(hf_state_dict: Mapping[str, Tensor], hf_config: Any,
                          source: str | None = None) -> tuple[dict[str, Tensor], ModelConfig]:
    """Map a transformers DETR or Conditional DETR state dict to this package's names, with its ModelConfig.

    Args:
        hf_state_dict: `model.state_dict()` of a `DetrForObjectDetection` / `ConditionalDetrForObjectDetection`
            (5.x names), or a `model.safetensors` written by `save_pretrained` (hub layout, 4.x names).
        hf_config: the model's config (object, or config.json as a dict): it says the family (`model_type`),
            heads, dilation and dropout, which the weights' shapes do not.
        source: what to name in error messages (e.g. the weights file); default "transformers <model_type> weights".

    Returns:
        The state dict (loads strictly into `build_model(model_config)`) and the ModelConfig.

    Raises:
        ValueError: an unsupported model type, or keys that cannot be mapped.
    """
    cfg = _config_dict(hf_config)
    family = FAMILIES.get(cfg.get("model_type", ""))
    if family is None:
        raise ValueError(f"hf_config: model_type {cfg.get('model_type')!r} is not supported; expected one of "
                         f"{sorted(FAMILIES)}")
    check_hf_backbone(cfg)
    rules = _UNIFY + (_CONDITIONAL_VALUES if family == "conditional_detr" else []) + _RESNET
    state: dict[str, Tensor] = {}
    for key, value in hf_state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        state[_rename(_rename(re.sub(r"^model\.", "", key), rules), _OFFICIAL)] = value
    cross = "multihead_attn" if family == "detr" else "cross_attn"  # the decoder's cross-attention, officially
    state = _join_qkv({k.replace(".encoder_attn.", f".{cross}."): v for k, v in state.items()})
    timm = cfg.get("backbone_config") if isinstance(cfg.get("backbone_config"), Mapping) else {}
    dilation = bool(cfg.get("dilation")) or timm.get("output_stride") == 16  # 5.x: timm's DC5 as its output stride
    told = {"nheads": cfg.get("encoder_attention_heads", ModelConfig.nheads), "dilation": dilation,
            "dropout": cfg.get("dropout", ModelConfig.dropout)}
    if "attention_dropout" in cfg and cfg["attention_dropout"] != told["dropout"]:
        told["attention_dropout"] = cfg["attention_dropout"]
    source = source or f"transformers {cfg['model_type']} weights"
    model_cfg = config_from_checkpoint({"model": state}, source, **told).model
    return state, model_cfg


def check_hf_backbone(hf_config: Mapping[str, Any]) -> None:
    """A ValueError when config.json names a backbone other than a ResNet this package builds: transformers' own
    ResNet, or timm's `resnet18/34/50/101` (a pretrained tag such as `resnet50.a1_in1k` names the same network)."""
    config = hf_config.get("backbone_config")
    kind = config.get("model_type") if isinstance(config, Mapping) else None
    if kind == "timm_backbone":  # 5.x spells use_timm_backbone this way
        name = config.get("backbone")
    else:
        name = hf_config.get("backbone") if config is None and hf_config.get("use_timm_backbone", True) else None
    if kind not in (None, "resnet", "timm_backbone") or (name and str(name).split(".")[0] not in _HF_RESNETS):
        raise ValueError(f"backbone {name or kind!r} is not one this package builds; expected transformers' ResNet "
                         f"or timm's {', '.join(_HF_RESNETS)}")


def hf_class_names(hf_config: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """config.json's `id2label` as class names indexed by class id, or None when it holds only transformers'
    placeholders (LABEL_0, ...). transformers' ids are the rows of the class head, as ours: for
    facebook/detr-resnet-50 they are COCO category ids 0..90 ("N/A" in the gaps), the indexing of the official
    weights."""
    names: dict[int, str] = {}
    for key, value in (hf_config.get("id2label") or {}).items():
        if str(key).lstrip("-").isdigit():
            names[int(key)] = str(value)
    if not names or all(name == f"LABEL_{i}" for i, name in names.items()):
        return None
    return [names.get(i, str(i)) for i in range(num_classes)]


# --- writing: the official names -> transformers' hub layout -----------------------------------------------

# torchvision ResNets as transformers' ResNetConfig: stage depths and block type (widths follow the type).
_HF_RESNETS = {"resnet18": ([2, 2, 2, 2], "basic"), "resnet34": ([3, 4, 6, 3], "basic"),
               "resnet50": ([3, 4, 6, 3], "bottleneck"), "resnet101": ([3, 4, 23, 3], "bottleneck")}
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
    if model_cfg.backbone not in _HF_RESNETS:
        problems.append(f"backbone {model_cfg.backbone!r}: transformers' DETR takes one of {', '.join(_HF_RESNETS)}")
    if model_cfg.pre_norm:
        problems.append("pre_norm: transformers' DETR transformer is post-norm only")
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
            out[_rename(key, rules)] = value
            continue
        prefix = _rename(m[1] + ".", rules)  # [3E, E] or [3E] -> q, k, v
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
    depths, block = _HF_RESNETS[m.backbone]
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
