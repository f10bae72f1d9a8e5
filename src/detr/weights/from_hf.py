"""HuggingFace transformers weights -> this package's (official) parameter names; transformers folders read.

`convert_hf_state_dict` undoes transformers' conversion scripts for `DetrForObjectDetection` and
`ConditionalDetrForObjectDetection`. It reads every spelling transformers has used:

- the hub layout that `save_pretrained` writes (and 4.x kept in memory): `model.backbone.conv_encoder.model.*`,
  `self_attn.out_proj`, `fc1`, and Conditional DETR's `ca_qcontent_proj`, `sa_v_proj`, `encoder_attn.out_proj`;
- 5.x in-memory names: `model.backbone.model.*`, `o_proj`, `mlp.fc1`, `self_attn.q_content_proj`,
  `encoder_attn.q_pos_sine_proj`;
- both backbone layouts: timm's (`conv1`, `layer1.0.bn1`, `downsample.0`: torchvision's names) and
  transformers' own ResNet (`embedder.embedder.convolution`, `encoder.stages.0.layers.0.layer.0`).

DETR's separate q/k/v projections are joined into `in_proj_weight` / `in_proj_bias` (nn.MultiheadAttention's layout).

`read_hf_folder` turns a `DetrForObjectDetection` / `ConditionalDetrForObjectDetection` folder (config.json +
model.safetensors or pytorch_model.bin) into a checkpoint dict like `detr.checkpoint.load_checkpoint`'s. The other
way is `to_hf.py`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import FAMILIES, Config, DataConfig, ModelConfig
from .identify import config_from_checkpoint

log = logging.getLogger(__name__)

# torchvision ResNets as transformers' ResNetConfig: stage depths and block type (widths follow the type).
HF_RESNETS = {"resnet18": ([2, 2, 2, 2], "basic"), "resnet34": ([3, 4, 6, 3], "basic"),
               "resnet50": ([3, 4, 6, 3], "bottleneck"), "resnet101": ([3, 4, 23, 3], "bottleneck")}

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


def rename_key(key: str, rules: list[tuple[str, Any]]) -> str:
    """`key` after every (pattern, replacement) of `rules`, in order."""
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
    family = cfg.get("model_type", "")  # transformers' model types are our family names
    if family not in FAMILIES:
        raise ValueError(f"hf_config: model_type {family!r} is not supported; expected one of "
                         f"{sorted(FAMILIES)}")
    check_hf_backbone(cfg)
    rules = _UNIFY + (_CONDITIONAL_VALUES if family == "conditional_detr" else []) + _RESNET
    state: dict[str, Tensor] = {}
    for key, value in hf_state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        state[rename_key(rename_key(re.sub(r"^model\.", "", key), rules), _OFFICIAL)] = value
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
    if kind not in (None, "resnet", "timm_backbone") or (name and str(name).split(".")[0] not in HF_RESNETS):
        raise ValueError(f"backbone {name or kind!r} is not one this package builds; expected transformers' ResNet "
                         f"or timm's {', '.join(HF_RESNETS)}")


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


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is a folder with a config.json (a transformers checkpoint folder, if anything)."""
    return (Path(path) / "config.json").is_file()


def read_hf_folder(folder: str | Path) -> dict[str, Any]:
    """A transformers DETR / Conditional DETR folder as a checkpoint dict (`detr.checkpoint.load_checkpoint`'s).

    Reads config.json, then model.safetensors (or its shards, model.safetensors.index.json) or else
    pytorch_model.bin (with `weights_only`: a file that would run code is refused), and preprocessor_config.json
    when there is one (the evaluation resize).

    Returns:
        {"model": state dict in official names, "config": `Config.to_dict()`} with the architecture from
        config.json and the weights' shapes, and class names from `id2label`.

    Raises:
        CheckpointError: naming the file: no or unreadable config.json, another model type, missing, truncated
            or unsafe weights, or weights that do not fit.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: not a transformers checkpoint folder (no config.json; expected "
                              f"config.json with {' or '.join(HF_WEIGHT_FILES)})")
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from None
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if model_type not in FAMILIES:
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not a model this package reads; expected "
                              "'detr' (DetrForObjectDetection) or 'conditional_detr' (ConditionalDetrForObjectDetection)")
    try:
        check_hf_backbone(hf)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    weights, state = _read_hf_weights(folder)
    try:
        state, model_cfg = convert_hf_state_dict(state, hf, source=str(weights))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    data = DataConfig(class_names=hf_class_names(hf, model_cfg.num_classes), **_preprocessor_sizes(folder))
    return {"model": state, "config": Config(model=model_cfg, data=data).to_dict()}


def _read_hf_weights(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    """The weights file of a transformers folder (safetensors first, as transformers) and its tensors."""
    index = folder / "model.safetensors.index.json"
    if not (folder / HF_WEIGHT_FILES[0]).is_file() and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a readable safetensors index ({type(e).__name__}: {e})") from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_checkpoint(folder / Path(shard).name)["model"])
        return index, state
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name, load_checkpoint(folder / name)["model"]
    raise CheckpointError(f"{folder}: has config.json but no weights: expected {' or '.join(HF_WEIGHT_FILES)}")


def _preprocessor_sizes(folder: Path) -> dict[str, int]:
    """The evaluation resize (val_scale, max_size) that preprocessor_config.json gives, if any."""
    path = folder / "preprocessor_config.json"
    try:
        pre = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: not readable JSON (%s); using the default resize", path, e)
        return {}
    size = pre.get("size") if isinstance(pre, dict) else None
    if isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
        longest = size.get("longest_edge")
        return {"val_scale": size["shortest_edge"], **({"max_size": longest} if isinstance(longest, int) else {})}
    if isinstance(size, int):  # the old feature extractors: size and max_size
        return {"val_scale": size, **({"max_size": pre["max_size"]} if isinstance(pre.get("max_size"), int) else {})}
    return {}
