"""The models this package knows by name.

- `MODELS`: architecture names for `create_model` (any ModelConfig field can be overridden);
- `PUBLISHED`: the official released weights: architecture, download address, the SHA-256
  prefix in the file name, class names and evaluation image size;
- the class names of COCO detection and COCO panoptic.

What a weights file holds is told by `detr.weights.identify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ModelConfig, dataclass_from_dict

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
