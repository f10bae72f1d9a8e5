"""The models this package knows by name, and the one routine that tells what a checkpoint holds.

- `MODELS`: architecture names for `create_model` (any ModelConfig field can be overridden);
- `PUBLISHED`: the official released weights: architecture, download address, the SHA-256
  prefix in the file name, class names and evaluation image size;
- `config_from_checkpoint`: the `Config` of a loaded checkpoint, whatever its origin (ours, an
  official training checkpoint with its `args`, a published file, or any official-layout weights).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from .checkpoint import CheckpointError
from .config import Config, DataConfig, ModelConfig, dataclass_from_dict

log = logging.getLogger(__name__)

# COCO 2017 category names indexed by category id (91 entries, "N/A" for the unused ids).
COCO_CLASSES: list[str] = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]


# COCO panoptic's stuff categories by id (the things keep their COCO detection ids, 1-90): the official
# panoptic models have 250 class outputs indexed by category id.
COCO_PANOPTIC_STUFF: dict[int, str] = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain", 112: "door-stuff",
    118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light", 133: "mirror-stuff",
    138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad", 148: "river", 149: "road",
    151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161: "stairs", 166: "tent", 168: "towel",
    171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177: "wall-wood", 178: "water-other",
    180: "window-blind", 181: "window-other", 184: "tree-merged", 185: "fence-merged", 186: "ceiling-merged",
    187: "sky-other-merged", 188: "cabinet-merged", 189: "table-merged", 190: "floor-other-merged",
    191: "pavement-merged", 192: "mountain-merged", 193: "grass-merged", 194: "dirt-merged", 195: "paper-merged",
    196: "food-other-merged", 197: "building-other-merged", 198: "rock-merged", 199: "wall-other-merged",
    200: "rug-merged",
}
COCO_PANOPTIC_CLASSES: list[str] = [*COCO_CLASSES, *(COCO_PANOPTIC_STUFF.get(i, "N/A") for i in range(91, 250))]


def coco_panoptic_is_thing(category_id: int) -> bool:
    """Whether a COCO panoptic category is a thing (ids 1-90, as the official code's is_thing_map)."""
    return category_id <= 90


# Conditional DETR's paper defaults that differ from DETR's ModelConfig defaults (its class cost and class
# loss weight of 2 follow from class_loss "focal": config.CLASS_LOSS_DEFAULTS).
_CONDITIONAL = {"family": "conditional_detr", "num_queries": 300, "class_loss": "focal"}

# Architecture names for create_model; the published DETR models are the first four.
MODELS: dict[str, dict[str, Any]] = {
    "detr_r50": {"backbone": "resnet50", "dilation": False},
    "detr_r50_dc5": {"backbone": "resnet50", "dilation": True},
    "detr_r101": {"backbone": "resnet101", "dilation": False},
    "detr_r101_dc5": {"backbone": "resnet101", "dilation": True},
    "conditional_detr_r50": {**_CONDITIONAL, "backbone": "resnet50", "dilation": False},
    "conditional_detr_r50_dc5": {**_CONDITIONAL, "backbone": "resnet50", "dilation": True},
    "conditional_detr_r101": {**_CONDITIONAL, "backbone": "resnet101", "dilation": False},
    "conditional_detr_r101_dc5": {**_CONDITIONAL, "backbone": "resnet101", "dilation": True},
    # the official panoptic models: DETR with the mask head (models/segmentation.py), 250 classes (COCO panoptic)
    "detr_r50_panoptic": {"backbone": "resnet50", "dilation": False, "masks": True, "num_classes": 250},
    "detr_r50_dc5_panoptic": {"backbone": "resnet50", "dilation": True, "masks": True, "num_classes": 250},
    "detr_r101_panoptic": {"backbone": "resnet101", "dilation": False, "masks": True, "num_classes": 250},
}


@dataclass(frozen=True)
class Published:
    """Released weights: `url`'s file name ends in `-<sha256 prefix>.pth`."""

    architecture: str  # a key of MODELS
    url: str
    class_names: tuple[str, ...] = tuple(COCO_CLASSES)
    num_classes: int = 91
    val_scale: int = 800  # short side at evaluation
    max_size: int = 1333

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        return self.file_name.split(".", 1)[0].rsplit("-", 1)[-1]


_BASE = "https://dl.fbaipublicfiles.com/detr/"
PUBLISHED: dict[str, Published] = {
    "detr_r50": Published("detr_r50", _BASE + "detr-r50-e632da11.pth"),
    "detr_r50_dc5": Published("detr_r50_dc5", _BASE + "detr-r50-dc5-f0fb7ef5.pth"),
    "detr_r101": Published("detr_r101", _BASE + "detr-r101-2c7b67e5.pth"),
    "detr_r101_dc5": Published("detr_r101_dc5", _BASE + "detr-r101-dc5-a2e86def.pth"),
    **{name: Published(name, _BASE + file, tuple(COCO_PANOPTIC_CLASSES), num_classes=250) for name, file in (
        ("detr_r50_panoptic", "detr-r50-panoptic-00ce5173.pth"),
        ("detr_r50_dc5_panoptic", "detr-r50-dc5-panoptic-da08f1b1.pth"),
        ("detr_r101_panoptic", "detr-r101-panoptic-40021d53.pth"))},
}


def model_config(name: str, num_classes: int | None = None, **overrides: Any) -> ModelConfig:
    """The ModelConfig of architecture `name` with overrides (official flag names); `num_classes` None: the
    model's default (250 for the panoptic models, else 91)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if "lr_backbone" in overrides:  # official flag: a zero backbone learning rate freezes it
        overrides["train_backbone"] = overrides.pop("lr_backbone") > 0
    values = {**MODELS[name], **overrides}
    if num_classes is not None:
        values["num_classes"] = num_classes
    return dataclass_from_dict(ModelConfig, values, where="create_model")


def published_from_file_name(path: str | Path) -> Published | None:
    """The published model whose SHA-256 prefix appears in the file's name (e.g. detr-r50-dc5-f0fb7ef5.pth)."""
    stem = Path(path).name.split(".", 1)[0]
    found = [p for p in PUBLISHED.values() if p.hash_prefix in stem.split("-")]
    return found[0] if len(found) == 1 else None


def config_from_checkpoint(ckpt: Mapping[str, Any], source: str, model: str | None = None,
                           **overrides: Any) -> Config:
    """The Config of a loaded checkpoint (`detr.checkpoint.load_checkpoint`'s dict).

    - Ours carries its whole Config.
    - Official weights: the architecture follows the weights' shapes; what shapes cannot tell
      (dilation, heads) comes, last wins, from the published model recognised by the file name
      (hash prefix), the training checkpoint's `args`, the `model` name, then `overrides`.
      When nothing says, a warning names the flags that decide.
    `overrides` (ModelConfig fields, e.g. the command line's `--dilation`) apply in every case.

    Raises:
        CheckpointError: the file holds no DETR weights, or a config this version cannot read.
    """
    saved = ckpt.get("config")
    if isinstance(saved, Mapping) and saved.get("model"):
        try:
            cfg = Config.from_dict(dict(saved))
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
    args = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else {}
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
