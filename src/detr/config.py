"""Configuration dataclasses with the paper's defaults.

Only `create_model`, `create_criterion` and the CLI read these objects; everything below
them takes explicit, typed arguments. Every checkpoint stores `Config.to_dict()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Architecture options; field names are the official DETR flag names."""

    num_classes: int = 91
    backbone: str = "resnet50"  # resnet50 | resnet101 (any torchvision ResNet)
    dilation: bool = False  # DC5: dilate the last stage instead of striding it
    train_backbone: bool = True  # False freezes the whole backbone (official: lr_backbone <= 0)
    position_embedding: str = "sine"  # sine | learned
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    # Dropout on attention weights. None keeps the paper's recipe (same as `dropout`, and
    # attention computed in the official order of operations in training); 0.0 drops it and
    # lets training use the fused attention kernel (much faster, not the paper's recipe).
    attention_dropout: float | None = None
    num_queries: int = 100
    pre_norm: bool = False
    aux_loss: bool = True
    # Most queries per chunk on the exact training attention path (chunks are also capped at
    # 2^21 attention weights when the whole attention exceeds 2^23); bounds training memory to
    # chunk x tokens instead of tokens^2.
    attention_chunk_size: int = 1024


@dataclass
class LossConfig:
    """Matcher costs and loss weights (official flag names)."""

    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1


@dataclass
class DataConfig:
    """Where the data lives. With nothing set, the built-in demo dataset is used."""

    coco_path: str | None = None
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    # Names of the classes indexed by label id (from the annotation file or the checkpoint).
    class_names: list[str] | None = None
    # Image sizes: training resizes the short side to one of `scales` (None: the paper's
    # 480..800), validation to the largest; the long side is capped at `max_size`.
    scales: list[int] | None = None
    max_size: int = 1333
    val_scale: int | None = None  # None: max(scales)
    random_crop: bool = True  # the paper's random resize + crop augmentation


@dataclass
class TrainConfig:
    """Optimisation and run options (official flag names)."""

    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 2
    epochs: int = 300
    lr_drop: int = 200
    clip_max_norm: float = 0.1
    seed: int = 42
    num_workers: int = 2
    device: str = "cuda"
    amp: str = "none"  # none | bf16 | fp16
    output_dir: str = ""
    resume: str = ""
    weights: str = ""
    # Where a fresh run's backbone starts when no --weights are given: "imagenet" (torchvision's
    # ImageNet ResNet, as the paper; downloaded once), "none" (random) or a ResNet state-dict file.
    backbone_weights: str = "imagenet"
    # Steps of the dense backbone warm-up that stands in for ImageNet pretraining (warmup.py); 0: none.
    backbone_warmup: int = 0
    eval_every: int = 1


@dataclass
class Config:
    """Everything needed to rebuild a run; saved in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild from `to_dict()` output; unknown keys (from newer versions) are an error."""
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            parts[f.name] = dataclass_from_dict(sub_cls, d.get(f.name, {}), where=f"config.{f.name}")
        return cls(**parts)


def dataclass_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from `values`, naming any unknown key in the error."""
    if not isinstance(values, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(known)}")
    return cls(**values)
