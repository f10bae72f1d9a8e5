"""What a weights file is, decided once: ours, an official file, an official training checkpoint, a transformers
folder or a PaddleDetection `.pdparams`; and the `Config` of a loaded checkpoint, whatever its origin.

- `file_kind`: the kind of a local path, from its name and layout (no file is read);
- `checkpoint_kind`: the kind of a loaded checkpoint dict (ours carries its Config, an official training
  checkpoint its `args`);
- `config_from_checkpoint`: the one routine that tells a checkpoint's architecture;
- `family_of` / `check_family`: DETR or Conditional DETR, from the official parameter names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from ..checkpoint import CheckpointError
from ..config import Config, DataConfig, ModelConfig, dataclass_from_dict
from ..registry import MODELS, PUBLISHED, Published

log = logging.getLogger(__name__)

FileKind = Literal["hf_folder", "pdparams", "checkpoint"]
CheckpointKind = Literal["ours", "official_training", "official"]


def file_kind(path: str | Path) -> FileKind:
    """What an existing local path holds: a transformers folder (a folder with config.json), a PaddleDetection
    `.pdparams` file, or a PyTorch / safetensors checkpoint (ours or official)."""
    path = Path(path)
    if path.is_dir():
        return "hf_folder"
    if path.suffix == ".pdparams":
        return "pdparams"
    return "checkpoint"


def checkpoint_kind(ckpt: Mapping[str, Any]) -> CheckpointKind:
    """Ours (it carries its Config), an official training checkpoint (its `args`), or official weights."""
    saved = ckpt.get("config")
    if isinstance(saved, Mapping) and saved.get("model"):
        return "ours"
    return "official_training" if isinstance(ckpt.get("args"), Mapping) else "official"


def published_from_file_name(path: str | Path) -> Published | None:
    """The published model whose SHA-256 prefix appears in the file's name (e.g. detr-r50-dc5-f0fb7ef5.pth)."""
    stem = Path(path).name.split(".", 1)[0]
    found = [p for p in PUBLISHED.values() if p.hash_prefix in stem.split("-")]
    return found[0] if len(found) == 1 else None


def config_from_checkpoint(ckpt: Mapping[str, Any], source: str, model: str | None = None,
                           **overrides: Any) -> Config:
    """The Config of a loaded checkpoint (`detr.weights.loading.load_weights`' dict).

    - Ours carries its whole Config.
    - Official weights: the architecture follows the weights' shapes; what shapes cannot tell
      (dilation, heads) comes, last wins, from the published model recognised by the file name
      (hash prefix), the training checkpoint's `args`, the `model` name, then `overrides`.
      When nothing says, a warning names the flags that decide.
    `overrides` (ModelConfig fields, e.g. the command line's `--dilation`) apply in every case.

    Raises:
        CheckpointError: the file holds no DETR weights, or a config this version cannot read.
    """
    if checkpoint_kind(ckpt) == "ours":
        try:
            cfg = Config.from_dict(dict(ckpt["config"]))
            cfg.model = dataclass_from_dict(ModelConfig, {**dataclasses.asdict(cfg.model), **overrides},
                                            where="model options")
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: its config is not usable ({e})") from None
        if model is not None and model in MODELS:
            check_family(ckpt["model"], MODELS[model].get("family", "detr"), source)
        return cfg
    state = ckpt["model"]
    if model is not None and model in MODELS:
        check_family(state, MODELS[model].get("family", "detr"), source)
    opts = _shape_options(state, source)
    told: dict[str, Any] = {}
    published = published_from_file_name(source)
    if published is not None:  # the released models use the default 8 heads
        told.update(MODELS[published.architecture], nheads=ModelConfig.nheads)
    args = ckpt["args"] if checkpoint_kind(ckpt) == "official_training" else {}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    told.update({k: v for k, v in args.items() if k in fields and (k not in opts or k == "backbone")})
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"model: unknown model {model!r}; known models: {', '.join(MODELS)}")
        told.update({k: v for k, v in MODELS[model].items() if k not in opts or k == "backbone"})  # shapes win
    told.update(overrides)
    if told.get("backbone", opts["backbone"]) != opts["backbone"]:
        raise CheckpointError(f"{source}: holds {opts['backbone']} weights, but {told['backbone']} was asked for; "
                              "pass the matching model name")
    if "dilation" not in told and opts["backbone"] != "tiny":  # the tiny trunk has no dilated variant
        log.warning("%s: whether the backbone is dilated (DC5) cannot be told from official-layout weights; "
                    "building it without dilation (and with %d heads unless --nheads says otherwise). For a DC5 "
                    "model pass --dilation (Python: dilation=True) or --model %s_r50_dc5 / %s_r101_dc5",
                    source, told.get("nheads", ModelConfig.nheads), opts["family"], opts["family"])
    model_cfg = dataclass_from_dict(ModelConfig, {**opts, **told}, where=f"{source}: model options")
    names = list(published.class_names) if published and model_cfg.num_classes == published.num_classes else None
    return Config(model=model_cfg, data=DataConfig(class_names=names))


# Keys that only one family's weights have (official names): Conditional DETR's decoder heads, DETR's
# decoder cross-attention.
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "conditional_detr": ("transformer.decoder.ref_point_head.layers.0.weight",
                         "transformer.decoder.query_scale.layers.0.weight",
                         "transformer.decoder.layers.0.cross_attn.out_proj.weight"),
    "detr": ("transformer.decoder.layers.0.multihead_attn.in_proj_weight",
             "transformer.decoder.layers.0.multihead_attn.out_proj.weight"),
}


def family_of(state: Mapping[str, Tensor]) -> str | None:
    """The model family whose keys an official-layout state dict holds, or None when it holds neither's."""
    found = [family for family, keys in FAMILY_KEYS.items() if keys[0] in state or f"detr.{keys[0]}" in state]
    return found[0] if len(found) == 1 else None


def check_family(state: Mapping[str, Tensor], family: str, source: str) -> None:
    """A CheckpointError naming both architectures and the keys that differ when `state` holds the weights of
    another family than `family` (e.g. an official DETR file given to a Conditional DETR model)."""
    held = family_of(state)
    if held is None or held == family:
        return
    extra = [k for k in FAMILY_KEYS[held] if k in state]
    absent = list(FAMILY_KEYS[family])
    raise CheckpointError(f"{source}: holds {held} weights, but a {family} model was asked for: the file has "
                          f"{extra} that a {family} model does not have, and lacks {absent}; pass a {held} "
                          f"model name (e.g. --model {held}_r50) or {family} weights")


# A key that only a ResNet trunk's weights have, and one that only the tiny trunk's (models/tiny.py) have.
_RESNET_KEY = "backbone.0.body.layer3.0.conv1.weight"
_TINY_KEY = "backbone.0.body.stem.0.weight"


def _shape_options(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """ModelConfig fields that an official-layout state dict's shapes tell (a segmentation model's: its `detr.*`)."""
    masks = "mask_head.lay1.weight" in state
    if masks:
        state = {k[len("detr."):]: v for k, v in state.items() if k.startswith("detr.")}
    required = ("class_embed.weight", "query_embed.weight", "transformer.encoder.layers.0.linear1.weight",
                _TINY_KEY if _TINY_KEY in state else _RESNET_KEY)
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not DETR weights: no {missing[0]!r} among its {len(state)} tensors "
                              f"(e.g. {list(state)[:3]})")
    family = family_of(state) or "detr"
    sigmoid = family == "conditional_detr"  # the official Conditional DETR head: C sigmoid outputs
    return dict(
        family=family,
        num_classes=state["class_embed.weight"].shape[0] - (0 if sigmoid else 1),
        num_queries=state["query_embed.weight"].shape[0],
        hidden_dim=state["query_embed.weight"].shape[1],
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        enc_layers=_count_layers(state, "transformer.encoder.layers."),
        dec_layers=_count_layers(state, "transformer.decoder.layers."),
        pre_norm="transformer.encoder.norm.weight" in state,
        position_embedding="learned" if "backbone.1.row_embed.weight" in state else "sine",
        backbone="tiny" if _TINY_KEY in state else _infer_resnet(state),
        **({"class_loss": "focal"} if sigmoid else {}),
        **({"masks": True} if masks else {}),
    )


def _count_layers(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def _infer_resnet(state: Mapping[str, Tensor]) -> str:
    """resnet18/34 have basic blocks (no conv3); 50/101 differ in layer3's block count (6 vs 23)."""
    blocks = _count_layers(state, "backbone.0.body.layer3.")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    if bottleneck:
        return "resnet101" if blocks == 23 else "resnet50"
    return "resnet34" if blocks == 6 else "resnet18"
