"""Everything checked and resolved before a run starts: options, data files, num_classes.

Each problem is an error that names the command-line argument, raised before any work.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .distributed import is_main_process

AMP_MODES = ("none", "bf16", "fp16")
DEMO_DATA_DIR = "runs/demo/data"


def resolve_device(name: str) -> torch.device:
    """The torch device for `--device`, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a valid device (e.g. cpu, cuda, cuda:1): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
    return device


def check_amp(amp: str, device: torch.device, argument: str = "amp") -> str:
    """`amp` if `device` can run it, else a ValueError naming `argument` and the choices."""
    if amp not in AMP_MODES:
        raise ValueError(f"{argument} must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{argument} fp16 needs a CUDA device; use bf16 on CPU")
    return amp


def validate_config(cfg: Config, training: bool = True) -> None:
    """Raise ValueError naming the argument for any option that cannot work."""
    t, m = cfg.train, cfg.model
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
        (t.backbone_weights in ("imagenet", "none") or Path(t.backbone_weights).is_file(),
         f"--backbone_weights {t.backbone_weights}: no such file (give imagenet, none or a ResNet state-dict file)"),
        (m.num_classes is None or m.num_classes >= 1, f"--num_classes must be >= 1, got {m.num_classes}"),
        (m.num_queries >= 1, f"--num_queries must be >= 1, got {m.num_queries}"),
        (m.hidden_dim % m.nheads == 0, f"--hidden_dim {m.hidden_dim} must be divisible by --nheads {m.nheads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_amp(t.amp, resolve_device(t.device), "--amp")
    if t.output_dir and Path(t.output_dir).exists() and not Path(t.output_dir).is_dir():
        raise ValueError(f"--output_dir {t.output_dir} is a file, not a folder")
    for flag, path in (("--resume", t.resume), ("--weights", t.weights)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: file not found")
    _validate_data_paths(cfg)


def _validate_data_paths(cfg: Config) -> None:
    d = cfg.data
    custom = {"--train_images": d.train_images, "--train_annotations": d.train_annotations,
              "--val_images": d.val_images, "--val_annotations": d.val_annotations}
    if d.coco_path and any(custom.values()):
        raise ValueError("give either --coco_path or --train_images/--train_annotations/..., not both")
    if d.coco_path and not Path(d.coco_path).is_dir():
        raise ValueError(f"--coco_path {d.coco_path}: folder not found")
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


def resolve_data(cfg: Config, demo_root: str | None = None) -> Config:
    """A copy of `cfg` with concrete data paths, num_classes and class names.

    --coco_path gives the COCO 2017 layout and 91 classes; custom data gives num_classes =
    largest category id + 1 unless set; with no data at all the demo dataset is generated
    (by the main process only) under `demo_root`.
    """
    from . import data

    d = cfg.data
    if d.coco_path:
        keys = ("train_images", "train_annotations", "val_images", "val_annotations")
        d = dataclasses.replace(d, **{k: str(v) for k, v in zip(keys, data.coco_paths(d.coco_path))})
    elif not d.train_annotations and not d.val_annotations:
        paths = _demo_paths(demo_root or _default_demo_root(cfg))
        d = dataclasses.replace(d, **{k: str(v) for k, v in paths.items() if hasattr(d, k)})
    ann_files = [a for a in (d.train_annotations, d.val_annotations) if a]
    needed = max(data.num_classes_from_annotations(a) for a in ann_files)
    num_classes = cfg.model.num_classes
    if num_classes is None:
        num_classes = 91 if cfg.data.coco_path else needed
    elif num_classes < needed:
        raise ValueError(f"--num_classes {num_classes} is too small: the annotations use category id "
                         f"{needed - 1}, so num_classes must be >= {needed}")
    if d.class_names is None:
        d = dataclasses.replace(d, class_names=data.class_names_from_annotations(ann_files[0]))
    model = dataclasses.replace(cfg.model, num_classes=num_classes)
    return dataclasses.replace(cfg, data=d, model=model)


def _default_demo_root(cfg: Config) -> str:
    return str(Path(cfg.train.output_dir) / "data") if cfg.train.output_dir else DEMO_DATA_DIR


def _demo_paths(root: str) -> dict[str, Any]:
    """Generate the demo dataset on the main process; the others wait and reuse it."""
    from . import data
    from .distributed import is_distributed

    box = [{k: str(v) for k, v in data.make_demo_dataset(root).items()} if is_main_process() else None]
    if is_distributed():
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def warn_if_too_few_queries(max_objects: int, num_queries: int, where: str) -> None:
    """Warn when an image has more objects than --num_queries (the extra ones can never be found)."""
    if max_objects > num_queries and is_main_process():
        warnings.warn(f"--num_queries {num_queries} is smaller than the {max_objects} objects of the most "
                      f"crowded image in {where}; at most {num_queries} objects per image can be detected",
                      stacklevel=2)
