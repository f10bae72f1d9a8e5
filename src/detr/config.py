"""Configuration dataclasses with the paper's defaults.

Only `create_model`, `create_criterion` and the CLI read these objects; everything below
them takes explicit, typed arguments. Every checkpoint stores `Config.to_dict()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
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


def validate_config(cfg: Config, training: bool = True) -> None:
    """Raise ValueError naming the argument for any option that cannot work."""
    # imported here: they bring torch, which parsers and `--help` built on this module do not need
    from .checkpoint import check_output_folder
    from .runtime import check_amp, resolve_device

    check_choices(cfg)
    t, m = cfg.train, cfg.model
    loggers = t.logger if isinstance(t.logger, (list, tuple)) else []
    checks = [
        (t.batch_size >= 1, f"--batch_size must be >= 1, got {t.batch_size}"),
        (t.lr >= 0, f"--lr must be >= 0, got {t.lr}"),
        (t.lr_backbone >= 0, f"--lr_backbone must be >= 0 (0 freezes the backbone), got {t.lr_backbone}"),
        (t.weight_decay >= 0, f"--weight_decay must be >= 0, got {t.weight_decay}"),
        (t.epochs >= 1 or not training, f"--epochs must be >= 1, got {t.epochs}"),
        (t.lr_drop >= 1, f"--lr_drop must be >= 1, got {t.lr_drop}"),
        (t.clip_max_norm >= 0, f"--clip_max_norm must be >= 0 (0 disables clipping), got {t.clip_max_norm}"),
        (t.num_workers >= 0, f"--num_workers must be >= 0, got {t.num_workers}"),
        (t.eval_every >= 1, f"--eval_every must be >= 1, got {t.eval_every}"),
        (t.backbone_warmup >= 0, f"--backbone_warmup must be >= 0, got {t.backbone_warmup}"),
        (0 <= t.ema_decay < 1, f"--ema_decay must be in [0, 1) (0: no weight average), got {t.ema_decay}"),
        (t.patience is None or t.patience >= 1, f"--patience must be >= 1 (or unset: no early stopping), got {t.patience}"),
        (isinstance(t.logger, (list, tuple)), f"--logger takes a list of names, got {t.logger!r}"),
        (all(name in LOGGERS for name in loggers),
         f"--logger must be among {', '.join(LOGGERS)}, got {' '.join(map(str, loggers))}"),
        (not loggers or bool(t.output_dir) or not training,
         f"--logger {' '.join(map(str, loggers))} writes under --output_dir: give one"),
        (t.steps_per_epoch is None or t.steps_per_epoch >= 1,
         f"--steps_per_epoch must be >= 1 (or unset: one pass over the data), got {t.steps_per_epoch}"),
        (t.backbone_weights in get_args(BackboneSource) or Path(t.backbone_weights).is_file(),
         f"--backbone_weights {t.backbone_weights}: no such file (give imagenet, none or a ResNet state-dict file)"),
        (m.backbone != "tiny" or t.backbone_weights == "none" or bool(t.weights or t.resume),
         f"--backbone_weights {t.backbone_weights}: the tiny backbone has no pretrained weights; "
         "give --backbone_weights none (it trains from scratch)"),
        (m.backbone != "tiny" or not m.dilation, "--dilation does not apply to --backbone tiny (stride 16 already)"),
        (m.num_classes is None or m.num_classes >= 1, f"--num_classes must be >= 1, got {m.num_classes}"),
        (m.num_queries >= 1, f"--num_queries must be >= 1, got {m.num_queries}"),
        (m.hidden_dim % m.nheads == 0, f"--hidden_dim {m.hidden_dim} must be divisible by --nheads {m.nheads}"),
        (m.num_groups >= 1, f"--num_groups must be >= 1 (1: no extra query groups), got {m.num_groups}"),
        (m.dn_number >= 0, f"--dn_number must be >= 0 (0: no denoising queries), got {m.dn_number}"),
        (0 <= m.dn_box_noise <= 1, f"--dn_box_noise must be in [0, 1], got {m.dn_box_noise}"),
        (0 <= m.dn_label_noise <= 1, f"--dn_label_noise must be in [0, 1], got {m.dn_label_noise}"),
        (m.family != "conditional_detr" or m.dn_number == 0,
         f"--dn_number {m.dn_number}: denoising queries do not apply to Conditional DETR yet; use --dn_number 0"),
        (m.family != "conditional_detr" or not m.pre_norm, "--pre_norm: Conditional DETR's decoder is post-norm only"),
        (m.family == "detr" or not m.box_rpb, f"--box_rpb is for plain DETR, not {m.family}: drop --box_rpb"),
        (cfg.loss.matcher_iou_power >= 0,
         f"--matcher_iou_power must be >= 0 (0: off), got {cfg.loss.matcher_iou_power}"),
        (0 <= cfg.data.mosaic_prob <= 1, f"--mosaic_prob must be in [0, 1] (0: off), got {cfg.data.mosaic_prob}"),
        (0 <= cfg.data.mixup_prob <= 1, f"--mixup_prob must be in [0, 1] (0: off), got {cfg.data.mixup_prob}"),
        (not m.masks or cfg.data.mosaic_prob == cfg.data.mixup_prob == 0,
         "--mosaic_prob / --mixup_prob do not apply to --masks (the instance masks are not combined)"),
        (cfg.loss.k_one2many >= 0, f"--k_one2many must be >= 0 (0: off), got {cfg.loss.k_one2many}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_amp(t.amp, resolve_device(t.device, "--device"), "--amp")
    if t.output_dir:
        check_output_folder(t.output_dir, "--output_dir")
    if t.frozen_weights and not m.masks:
        raise ValueError("--frozen_weights trains the mask head on a frozen detector: it needs --masks")
    if t.frozen_weights and t.weights:
        raise ValueError("give either --frozen_weights (a detector, frozen) or --weights (a model to fine-tune), "
                         "not both")
    for flag, path in (("--resume", t.resume), ("--frozen_weights", t.frozen_weights)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: file not found")
    if t.weights and _is_file_name(t.weights) and not Path(t.weights).exists():  # names and hub ids: when loaded
        raise ValueError(f"--weights {t.weights}: file not found")
    _validate_data_paths(cfg)


def _validate_data_folder(d: DataConfig) -> None:
    """--data: an existing folder, a known --data_format, and no other data flag (until resolved)."""
    if d.data_format is not None and d.data_format not in DATA_FORMATS:
        raise ValueError(f"--data_format must be one of {', '.join(DATA_FORMATS)}, got {d.data_format!r}")
    if d.data_format is not None and not d.data:
        raise ValueError("--data_format says how to read --data DIR: give --data as well")
    if not d.data:
        return
    if not Path(d.data).is_dir():
        raise ValueError(f"--data {d.data}: folder not found")
    others = [f"--{k}" for k in ("coco_path", "coco_panoptic_path", "train_panoptic", "val_panoptic")
              if getattr(d, k)]
    if d.category_ids is None:  # resolved configs (in checkpoints) hold the written files' paths
        others += [f"--{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")
                   if getattr(d, k)]
    if others:
        raise ValueError(f"give either --data or {', '.join(others)}, not both")


def _is_file_name(text: str) -> bool:
    """Whether --weights `text` can only be a local path: a file suffix, or an absolute or explicitly relative path
    (a published name such as detr_r50 or a hub id such as facebook/detr-resnet-50 has neither)."""
    return Path(text).suffix in (".pth", ".pt", ".safetensors", ".bin") or text.startswith(("/", "./", "../", "~"))


def _validate_data_paths(cfg: Config) -> None:
    d = cfg.data
    _validate_data_folder(d)
    custom = {"--train_images": d.train_images, "--train_annotations": d.train_annotations,
              "--val_images": d.val_images, "--val_annotations": d.val_annotations}
    if d.coco_path and any(custom.values()):
        raise ValueError("give either --coco_path or --train_images/--train_annotations/..., not both")
    if d.coco_path and not Path(d.coco_path).is_dir():
        raise ValueError(f"--coco_path {d.coco_path}: folder not found")
    if d.coco_panoptic_path and not d.coco_path:
        raise ValueError("--coco_panoptic_path holds the panoptic annotations; the images come from --coco_path: "
                         "give it as well")
    for flag, folder, ann in (("--train_panoptic", d.train_panoptic, d.train_annotations),
                              ("--val_panoptic", d.val_panoptic, d.val_annotations)):
        if folder and not ann:
            raise ValueError(f"{flag} needs --{flag[2:].split('_')[0]}_annotations (its COCO panoptic JSON) as well")
        if folder and not Path(folder).is_dir():
            raise ValueError(f"{flag} {folder}: folder not found")
    for pair in (("--train_images", "--train_annotations"), ("--val_images", "--val_annotations")):
        given = [flag for flag in pair if custom[flag]]
        if len(given) == 1:
            missing = next(flag for flag in pair if flag not in given)
            raise ValueError(f"{given[0]} needs {missing} as well")
    for flag, path in custom.items():
        if path is None:
            continue
        if flag.endswith("images") and not Path(path).is_dir():
            raise ValueError(f"{flag} {path}: folder not found")
        if flag.endswith("annotations") and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: file not found")
