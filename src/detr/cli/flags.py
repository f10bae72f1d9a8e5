"""The official DETR flags of `detr train` and `detr eval`, and the `Config` they make.

Flags left out keep the `Config` defaults (the paper's) or a preset's (the demo's, or --model's).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from ..config import LOGGERS, Config, config_from_flags
from ..registry import MODELS

log = logging.getLogger(__name__)

# (flag, type, help); the section a flag belongs to is the dataclass that has the field.
FLAGS: list[tuple[str, Any, str]] = [
    ("lr", float, "learning rate of the transformer and heads"),
    ("lr_backbone", float, "learning rate of the backbone; 0 freezes it"),
    ("batch_size", int, "images per process per step"),
    ("weight_decay", float, "AdamW weight decay"),
    ("epochs", int, "number of epochs"),
    ("lr_drop", int, "divide the learning rates by 10 every this many epochs"),
    ("clip_max_norm", float, "gradient clipping max norm (0: no clipping)"),
    ("backbone", str, "torchvision ResNet: resnet18, resnet34, resnet50, resnet101; or tiny (a small conv trunk "
                      "trained from scratch, stride 16; needs --backbone_weights none)"),
    ("position_embedding", str, "sine or learned"),
    ("enc_layers", int, "transformer encoder layers"),
    ("dec_layers", int, "transformer decoder layers"),
    ("dim_feedforward", int, "feed-forward width in the transformer"),
    ("hidden_dim", int, "transformer width"),
    ("dropout", float, "dropout in the transformer"),
    ("attention_dropout", float, "dropout on attention weights (default: = dropout; 0 enables fused attention)"),
    ("nheads", int, "attention heads"),
    ("num_queries", int, "object queries (most objects one image can have)"),
    ("num_groups", int, "Group DETR: query groups trained side by side (1: DETR; inference uses group 1)"),
    ("recipe", str, "official (the paper's) or fast: Group DETR with 3 groups and --ema_decay 0.9995; from a random "
     "backbone also a 250-step backbone warm-up and lr 2e-4 (README: Faster convergence)"),
    ("dn_number", int, "denoising groups of noised ground truth as extra training queries (0: none; DN-DETR)"),
    ("dn_box_noise", float, "denoising: box noise, a fraction of the box size"),
    ("dn_label_noise", float, "denoising: twice the probability that a label is replaced by a random class"),
    ("class_loss", str, "class head: softmax (the paper's, with a no-object class), varifocal (IoU-aware "
                        "sigmoid head, focal matching cost, top-k postprocessing) or focal (Conditional DETR's "
                        "sigmoid focal loss, focal matching cost, top-k postprocessing)"),
    ("num_classes", int, "class head size (default: 91 for COCO, largest category id + 1 otherwise)"),
    ("set_cost_class", float, "matcher: class cost (default: 2 for --class_loss focal, else 1)"),
    ("set_cost_bbox", float, "matcher: L1 box cost"),
    ("set_cost_giou", float, "matcher: GIoU cost"),
    ("cls_loss_coef", float, "class loss weight (default: 2 for --class_loss focal, else 1)"),
    ("bbox_loss_coef", float, "L1 box loss weight"),
    ("giou_loss_coef", float, "GIoU loss weight"),
    ("eos_coef", float, "weight of the no-object class"),
    ("mask_loss_coef", float, "with --masks: weight of the sigmoid focal loss of the masks (loss_mask)"),
    ("dice_loss_coef", float, "with --masks: weight of the dice loss of the masks (loss_dice)"),
    ("frozen_weights", str, "with --masks: a trained detector, loaded and frozen; only the mask head trains"),
    ("coco_path", str, "COCO 2017 folder (train2017/, val2017/, annotations/)"),
    ("dataset_file", str, "coco (instances; with --masks their polygon/RLE masks) or coco_panoptic (with "
                          "--coco_panoptic_path)"),
    ("coco_panoptic_path", str, "with --dataset_file coco_panoptic: the folder of annotations/panoptic_{train,val}"
                                "2017.json and the PNG folders panoptic_{train,val}2017"),
    ("train_images", str, "custom data: training image folder"),
    ("train_annotations", str, "custom data: training COCO instances JSON"),
    ("val_images", str, "custom data: validation image folder"),
    ("val_annotations", str, "custom data: validation COCO instances JSON"),
    ("train_panoptic", str, "custom panoptic data: the PNG folder of --train_annotations, then a COCO panoptic JSON"),
    ("val_panoptic", str, "custom panoptic data: the PNG folder of --val_annotations, then a COCO panoptic JSON"),
    ("output_dir", str, "where checkpoints, log.txt and detections go (default: runs/train)"),
    ("device", str, "cuda or cpu (default: cuda when available)"),
    ("seed", int, "random seed"),
    ("resume", str, "training checkpoint to continue exactly"),
    ("weights", str, "model weights to start from (ours, official, a transformers folder or hub id; another "
                     "class count re-initialises the head)"),
    ("backbone_weights", str, "where a fresh backbone starts: imagenet, none (random) or a torchvision ResNet "
                              "state-dict file"),
    ("backbone_warmup", int, "steps of dense warm-up of the backbone on the training data (for runs without "
                             "ImageNet weights)"),
    ("ema_decay", float, "evaluate and save an exponential moving average of the weights with this decay "
                         "(e.g. 0.9995; 0: off)"),
    ("num_workers", int, "data loading processes"),
    ("amp", str, "mixed precision: none, bf16 (CPU or GPU), fp16 (GPU)"),
    ("eval_every", int, "evaluate every this many epochs (and after the last)"),
    ("steps_per_epoch", int, "make an epoch this many training steps, drawn in order from consecutive shuffled "
                             "passes over the data (default: one pass); --epochs, --lr_drop, --eval_every count them"),
    ("patience", int, "early stopping: stop after this many evaluations without a better val AP (PQ or mask AP "
                      "when evaluated; the metric best.pth follows); default: off"),
    ("max_size", int, "longest image side"),
    ("val_scale", int, "validation short side (default: the largest of --scales)"),
]
SWITCHES = [("dilation", "DC5: dilate the last backbone stage"), ("pre_norm", "pre-norm transformer layers"),
            ("masks", "segmentation: the mask head on the detector (pred_masks; loss_mask, loss_dice)"),
            ("no_aux_loss", "no auxiliary decoder losses"), ("eval", "only evaluate --resume/--weights"),
            ("no_random_crop", "no random-crop augmentation")]
# Official flags that do not apply here: accepted so old command lines run, and reported.
IGNORED = {"world_size": None, "dist_url": None, "start_epoch": None, "remove_difficult": None}
DATASET_FILES = ("coco", "coco_panoptic")
PATH_FLAGS = {"coco_path", "train_images", "train_annotations", "val_images", "val_annotations", "output_dir",
              "resume", "weights", "frozen_weights", "coco_panoptic_path", "train_panoptic", "val_panoptic"}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    defaults = Config().to_dict()
    for name, kind, text in FLAGS:
        default = next((sec[name] for sec in defaults.values() if name in sec), None)
        metavar = {int: "N", float: "X"}.get(kind, "PATH" if name in PATH_FLAGS else "NAME")
        parser.add_argument(f"--{name}", type=kind, default=None, metavar=metavar,
                            help=f"{text} (default: {default})" if default not in (None, "") else text)
    parser.add_argument("--model", choices=list(MODELS), default=None,
                        help="architecture preset (model family, backbone, dilation; conditional_detr_*: Conditional "
                             "DETR with 300 queries and the focal class head); explicit flags win. For an official "
                             "weights file: the model it is, for what its shapes cannot tell (DC5)")
    parser.add_argument("--scales", type=int, nargs="+", default=None, metavar="N",
                        help="training short sides (default: the paper's 480 512 ... 800)")
    parser.add_argument("--logger", choices=LOGGERS, nargs="+", action="extend", default=None, metavar="NAME",
                        help="experiment logging under --output_dir, one or several (the flag may repeat): "
                             "tensorboard, wandb (offline unless WANDB_MODE says otherwise), mlflow (a local store "
                             "unless MLFLOW_TRACKING_URI is set); each needs its extra, e.g. "
                             "pip install 'detr-aligned[tensorboard]'")
    for name, text in SWITCHES:
        parser.add_argument(f"--{name}", action="store_true", help=text)
    for name in IGNORED:
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS,
                            **({"action": "store_true"} if name == "remove_difficult" else {}))
    return parser


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, as Config field names (switches translated)."""
    _check_ignored(args)
    _check_dataset_file(args)
    given = {k: v for k, v in vars(args).items() if v is not None and v is not False}
    given.pop("dataset_file", None)  # what it selects is in the paths: --coco_panoptic_path
    given.pop("eval", None)
    if given.pop("no_aux_loss", False):
        given["aux_loss"] = False
    if given.pop("no_random_crop", False):
        given["random_crop"] = False
    return given


def config_from_args(args: argparse.Namespace, preset: dict[str, Any] | None = None) -> Config:
    """A Config from the parsed flags; `preset` values, then --model's, replace the defaults of flags not given."""
    given = given_flags(args)
    model = given.pop("model", None)
    values = {**(preset or {}), **(MODELS[model] if model else {}), **given}
    values.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    values.setdefault("output_dir", "runs/train")
    values.setdefault("num_classes", None)  # resolved from the data
    return config_from_flags(values)


def _check_dataset_file(args: argparse.Namespace) -> None:
    """The official --dataset_file: coco_panoptic goes with --coco_panoptic_path, and only it."""
    kind = args.dataset_file
    if kind not in (None, *DATASET_FILES):
        raise ValueError(f"--dataset_file {kind}: must be one of {', '.join(DATASET_FILES)}; for other data use "
                         "--train_images/--train_annotations/--val_images/--val_annotations (and --train_panoptic/"
                         "--val_panoptic for panoptic PNG folders)")
    if kind == "coco_panoptic" and not args.coco_panoptic_path:
        raise ValueError("--dataset_file coco_panoptic needs --coco_panoptic_path (the folder of annotations/"
                         "panoptic_{train,val}2017.json and panoptic_{train,val}2017/)")
    if args.coco_panoptic_path and kind != "coco_panoptic":
        raise ValueError(f"--coco_panoptic_path {args.coco_panoptic_path} is read with --dataset_file coco_panoptic "
                         "(as the official command line); add it")


def _check_ignored(args: argparse.Namespace) -> None:
    for name in ("world_size", "dist_url", "start_epoch", "remove_difficult"):
        if getattr(args, name):
            log.warning("--%s is ignored: torchrun sets up processes, --resume sets the epoch", name)
        setattr(args, name, None)
    for name in IGNORED:
        setattr(args, name, None)


def has_data(args: argparse.Namespace) -> bool:
    return any(getattr(args, k) for k in ("coco_path", "train_annotations", "val_annotations"))
