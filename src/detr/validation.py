"""Checks of a whole Config before it runs: every option's range, the files and folders it names, and the
combinations that cannot work. Each failure is a ValueError that names the flag."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from .config import DATA_FORMATS, LOGGERS, BackboneSource, Config, DataConfig, check_choices


def validate_config(cfg: Config, training: bool = True) -> None:
    """Raise ValueError naming the argument for any option that cannot work."""
    # imported here: they bring torch, which parsers and `--help` built on this module do not need
    from .checkpoint import check_output_folder
    from .runtime import check_amp, resolve_device

    check_choices(cfg)
    for ok, message in _option_checks(cfg, training):
        if not ok:
            raise ValueError(message)
    t, m = cfg.train, cfg.model
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


def _option_checks(cfg: Config, training: bool) -> list[tuple[bool, str]]:
    """(holds, the error if not) for each option's range and each combination of options."""
    t, m = cfg.train, cfg.model
    loggers = t.logger if isinstance(t.logger, (list, tuple)) else []
    return [
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
