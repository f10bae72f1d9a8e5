"""Configuration dataclasses with the paper's defaults.

Only `create_model`, `create_criterion` and the CLI read these objects; everything below
them takes explicit, typed arguments. Every checkpoint stores `Config.to_dict()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .presets.recipes import FAST_DEFAULTS, FROM_SCRATCH, FROM_WEIGHTS, RECIPES

# The closed choices of the options; `check_choices` checks every Literal-typed field against its values.
ClassLoss = Literal["softmax", "varifocal", "focal", "mal"]
Family = Literal["detr", "conditional_detr"]
PositionEmbedding = Literal["sine", "learned"]
Amp = Literal["none", "bf16", "fp16"]
Recipe = Literal["official", "fast"]
DatasetFile = Literal["coco", "coco_panoptic"]  # the official --dataset_file (a flag, not a field)
DataFormat = Literal["coco", "roboflow", "yolo", "voc"]  # --data_format: how --data DIR is laid out
BackboneSource = Literal["imagenet", "none"]  # --backbone_weights' names; anything else is a state-dict file


@dataclass
class ModelConfig:
    """Architecture options; field names are the official DETR flag names."""

    num_classes: int = 91
    # detr | conditional_detr (Conditional DETR: reference points and conditional cross-attention, models/conditional.py)
    family: Family = "detr"
    # resnet50 | resnet101 (any torchvision ResNet), or "tiny": a small conv trunk trained from
    # scratch (stride 16, trainable BatchNorm, no pretrained weights; models/tiny.py)
    backbone: str = "resnet50"
    dilation: bool = False  # DC5: dilate the last stage instead of striding it
    train_backbone: bool = True  # False freezes the whole backbone (official: lr_backbone <= 0)
    position_embedding: PositionEmbedding = "sine"
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
    # Fast-convergence options, used in training only (defaults: the official DETR). Group DETR
    # (arXiv 2207.13085): K groups of queries, each matched and trained on its own; inference keeps group 1.
    num_groups: int = 1
    # Denoising queries (DN-DETR, arXiv 2203.01305): dn_number noised copies of the ground truth as extra
    # decoder queries that learn to reconstruct it; labels flipped with probability dn_label_noise / 2,
    # boxes moved by up to dn_box_noise of their size.
    dn_number: int = 0
    dn_box_noise: float = 0.4
    dn_label_noise: float = 0.5
    # softmax: the paper's C+1-way head with a "no object" class; varifocal: an IoU-aware sigmoid head
    # of C outputs (RT-DETR's varifocal loss), focal matching cost, top-k postprocessing; focal: a sigmoid
    # head of C outputs with the sigmoid focal loss (Conditional DETR's, named loss_ce), focal matching cost, top-k;
    # mal: a sigmoid head trained with DEIM's matchability-aware loss (loss_mal; IoU^gamma targets, positives weight 1).
    class_loss: ClassLoss = "softmax"
    # Segmentation (official --masks): the mask head on top of the detector (models/segmentation.py), which adds
    # "pred_masks" [B, Q, H/4, W/4]; its parameters are `bbox_attention.*`, `mask_head.*` and the detector's `detr.*`.
    masks: bool = False
    # Plain DETR's box-to-pixel relative position bias in the decoder's cross-attention (models/box_rpb.py); detr only.
    box_rpb: bool = False


@dataclass
class LossConfig:
    """Matcher costs and loss weights (official flag names)."""

    # None: the class head's default, CLASS_LOSS_DEFAULTS (2 for the focal head, as Conditional DETR; else 1).
    set_cost_class: float | None = None
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    cls_loss_coef: float | None = None  # weight of the class loss; None: as set_cost_class
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1
    # The sigmoid heads' focal weighting (matcher cost and loss): alpha, gamma of the focal loss.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    mal_gamma: float = 1.5  # --class_loss mal: the exponent of its IoU target and of its negatives' weight (DEIM's)
    # > 0: the matcher's class cost reads the IoU-modulated score p * IoU^power (Stable-DINO, Align-DETR); 0: p.
    matcher_iou_power: float = 0.0
    # > 0: MS-DETR's one-to-many loss, each layer's outputs matched again to K copies of the ground truth, its terms
    # (`_o2m`) weighted one2many_loss_coef times the one-to-one ones; 0: off.
    k_one2many: int = 0
    one2many_loss_coef: float = 1.0
    # With masks: weights of the sigmoid focal loss (loss_mask) and the dice loss (loss_dice) of the matched masks.
    mask_loss_coef: float = 1.0
    dice_loss_coef: float = 1.0


FAMILIES: tuple[str, ...] = get_args(Family)
CLASS_LOSSES: tuple[str, ...] = get_args(ClassLoss)
# The heads of C independent sigmoid outputs (no "no object" class): focal matching cost, top-k postprocessing.
SIGMOID_HEADS: tuple[str, ...] = ("varifocal", "focal", "mal")
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
# The class cost and class loss weight each head was published with (Conditional DETR: 2 and 2).
CLASS_LOSS_DEFAULTS: dict[str, float] = {"softmax": 1.0, "varifocal": 1.0, "focal": 2.0, "mal": 1.0}


@dataclass
class DataConfig:
    """Where the data lives. With nothing set, the built-in demo dataset is used."""

    # --data DIR: a COCO 2017, Roboflow COCO, YOLO or Pascal VOC folder (data/formats/), written as COCO JSON
    # files under the output folder; those files' paths then fill train_images ... val_annotations.
    data: str | None = None
    data_format: DataFormat | None = None  # None: detected from the layout
    # --data: label i is the dataset's category id category_ids[i] (sparse ids get a contiguous head);
    # None: labels are the category ids (the official flags).
    category_ids: list[int] | None = None
    coco_path: str | None = None
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    # COCO panoptic (official flag): annotations/panoptic_{train,val}2017.json and the PNG folders
    # panoptic_{train,val}2017 (data.coco_panoptic_paths); the images stay in coco_path.
    coco_panoptic_path: str | None = None
    # Custom panoptic data: the PNG folders of --train_annotations / --val_annotations when those are
    # COCO panoptic JSONs (the images stay in --train_images / --val_images).
    train_panoptic: str | None = None
    val_panoptic: str | None = None
    # Names of the classes indexed by label id (from the annotation file or the checkpoint).
    class_names: list[str] | None = None
    # Image sizes: training resizes the short side to one of `scales` (None: the paper's
    # 480..800), validation to the largest; the long side is capped at `max_size`.
    scales: list[int] | None = None
    max_size: int = 1333
    val_scale: int | None = None  # None: max(scales)
    random_crop: bool = True  # the paper's random resize + crop augmentation
    # Shares of the training images made a mosaic of 4 / mixed up with another (DEIM; data/mosaic.py); 0: off.
    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0


LoggerName = Literal["tensorboard", "wandb", "mlflow"]
LOGGERS: tuple[LoggerName, ...] = ("tensorboard", "wandb", "mlflow")


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
    amp: Amp = "none"
    output_dir: str = ""
    resume: str = ""
    weights: str = ""
    # Official --frozen_weights: a trained detector's weights (with --masks) that are loaded and frozen, so that only
    # the mask head trains (the official recipe: detection first, then the mask head).
    frozen_weights: str = ""
    # Where a fresh run's backbone starts when no --weights are given: "imagenet" (torchvision's
    # ImageNet ResNet, as the paper; downloaded once), "none" (random) or a ResNet state-dict file.
    backbone_weights: BackboneSource | str = "imagenet"
    # Steps of the dense backbone warm-up that stands in for ImageNet pretraining (warmup.py); 0: none.
    backbone_warmup: int = 0
    eval_every: int = 1
    # None: an epoch is one pass over the training set. N: an epoch is N steps, taken in order from
    # consecutive shuffled passes (epoch e continues where e-1 stopped), so that --eval_every,
    # --epochs and --lr_drop count blocks of N steps (the convergence benchmark evaluates every N steps).
    steps_per_epoch: int | None = None
    # Training batches of landscape images only or portrait images only (Detectron2's aspect-ratio grouping):
    # less padding, so faster steps where orientations mix. Off: the official batches.
    group_by_aspect: bool = False
    # A named set of options (RECIPES): "official" (the paper's) or "fast" (the fast-convergence options).
    recipe: Recipe = "official"
    # > 0: evaluate and save an exponential moving average of the weights with this decay (training/ema.py); 0: off.
    ema_decay: float = 0.0
    # Early stopping: stop after this many evaluations without a better value of the metric best.pth follows
    # (PQ, mask AP or box AP: training/state.py selection_metric); None: train all --epochs.
    patience: int | None = None
    # Experiment loggers (training/loggers.py), each from its extra: tensorboard, wandb, mlflow.
    logger: list[LoggerName] = field(default_factory=list)


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


# How a field is named in errors when it is not a flag of its own.
_CHOICE_NAMES = {"family": "family (chosen with --model)"}


def check_choice(value: Any, choices: Any, name: str) -> Any:
    """`value` if it is one of the Literal type `choices`' values, else a ValueError naming `name` and them."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def literal_choices(name: str) -> tuple[str, ...]:
    """The values of the Config field `name` when it is a closed choice (a Literal type), else ()."""
    for section in dataclasses.fields(Config):
        hint = get_type_hints(section.default_factory).get(name)  # type: ignore[arg-type]
        if get_origin(hint) is Literal:
            return get_args(hint)
    return ()


def check_choices(cfg: Config) -> None:
    """Every closed choice of `cfg` (each Literal-typed field) against its Literal's values."""
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for name, hint in get_type_hints(type(part)).items():
            if get_origin(hint) is Literal:
                check_choice(getattr(part, name), hint, _CHOICE_NAMES.get(name, f"--{name}"))


def uses_sigmoid(class_loss: str) -> bool:
    """Whether the class head `class_loss` is a sigmoid head (C outputs, no "no object" class; SIGMOID_HEADS)."""
    return check_choice(class_loss, ClassLoss, "class_loss") in SIGMOID_HEADS


def starts_from_scratch(values: dict[str, Any]) -> bool:
    """Whether the backbone of a run with these flat values starts from random weights: the tiny trunk or
    --backbone_weights none, and no --weights (a --resume'd run keeps the options it started with)."""
    random_trunk = values.get("backbone") == "tiny" or values.get("backbone_weights") == "none"
    return random_trunk and not values.get("weights")


def recipe_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options `values["recipe"]` sets for a run with these flat values (RECIPES; for fast also FAST_DEFAULTS,
    FROM_SCRATCH when the backbone starts from random weights, FROM_WEIGHTS when --weights are fine-tuned)."""
    recipe = check_choice(values.get("recipe", "official"), Recipe, "--recipe")
    options = dict(RECIPES[recipe])
    if recipe == "fast":
        options.update(FAST_DEFAULTS)
        if starts_from_scratch(values):
            options.update(FROM_SCRATCH)
        elif str(values.get("weights") or "none").lower() != "none":
            options.update(FROM_WEIGHTS)
    return options


def apply_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the options of `values["recipe"]` added. A value that contradicts RECIPES is an error;
    the FAST_DEFAULTS, FROM_SCRATCH and FROM_WEIGHTS options are starting values that explicit flags replace."""
    options = recipe_options(values)
    for name, value in options.items():
        if name in values and values[name] != value and name not in {**FAST_DEFAULTS, **FROM_SCRATCH, **FROM_WEIGHTS}:
            raise ValueError(f"--recipe {values['recipe']} sets --{name} {value}; --{name} {values[name]} "
                             "contradicts it (drop one of the two)")
    return {**options, **values}


def config_from_flags(values: dict[str, Any]) -> Config:
    """A Config from flat values named as the official flags (`lr`, `backbone`, `coco_path`, ...).

    As in the official code, `lr_backbone` 0 freezes the backbone. `recipe` adds its options (RECIPES).
    Unknown names are an error.
    """
    values = apply_recipe(dict(values))
    if "lr_backbone" in values:
        values["train_backbone"] = values["lr_backbone"] > 0
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    parts, used = {}, set()
    for section, cls in sections.items():
        names = {f.name for f in dataclasses.fields(cls)} & set(values)
        parts[section] = cls(**{k: values[k] for k in names})
        used |= names
    unknown = sorted(set(values) - used)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}")
    return Config(**parts)


def dataclass_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from `values`, naming any unknown key in the error."""
    if not isinstance(values, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(known)}")
    return cls(**values)
