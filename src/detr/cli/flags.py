"""Every `detr` command's parser is built here, from shared groups of flags, so that a flag is declared once.

`detr train` and `detr eval` take the official DETR flags and make a `Config` from them; flags left out keep
the `Config` defaults (the paper's) or --model's. `make_parser` turns argparse's prefix matching off, and old
spellings of a flag (`--max-size`, `--size`, `--output`) are accepted with a deprecation warning.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from typing import Any, get_args

from ..config import LOGGERS, Config, DatasetFile, literal_choices
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
                        "sigmoid focal loss, focal matching cost, top-k postprocessing) or mal (DEIM's "
                        "matchability-aware sigmoid loss, IoU^gamma targets)"),
    ("num_classes", int, "class head size (default: 91 for COCO, largest category id + 1 otherwise)"),
    ("mal_gamma", float, "--class_loss mal: exponent of the IoU target and of the negatives' weight"),
    ("matcher_iou_power", float, "IoU-aware matching: the class cost reads the score times IoU^this "
                                 "(Stable-DINO, Align-DETR; 0: off)"),
    ("k_one2many", int, "one-to-many loss: each decoder layer also matched to K copies of the ground truth "
                        "(MS-DETR; 0: off)"),
    ("one2many_loss_coef", float, "weight of the one-to-many loss terms relative to the one-to-one ones"),
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
    ("data", str, "a dataset folder: COCO 2017, Roboflow COCO export, YOLO (data.yaml) or Pascal VOC, recognised "
                  "from its layout; fine-tunes detr_r50 (50 epochs) unless --weights/--epochs say otherwise"),
    ("data_format", str, "read --data as coco, roboflow, yolo or voc (default: recognised from the layout)"),
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
    ("mosaic_prob", float, "share of the training images made a 2x2 mosaic with 3 others (DEIM; 0: off)"),
    ("mixup_prob", float, "share of the training images blended with another, both sets of boxes kept (DEIM; 0: off)"),
    ("patience", int, "early stopping: stop after this many evaluations without a better val AP (PQ or mask AP "
                      "when evaluated; the metric best.pth follows); default: off"),
    ("max_size", int, "longest image side"),
    ("val_scale", int, "validation short side (default: the largest of --scales)"),
]
SWITCHES = {"dilation": "DC5: dilate the last backbone stage (for an official weights file: it is DC5, which "
                        "its shapes cannot tell)",
            "pre_norm": "pre-norm transformer layers",
            "group_by_aspect": "batch landscape and portrait training images apart (less padding, faster steps)",
            "masks": "segmentation: the mask head on the detector (pred_masks; loss_mask, loss_dice)",
            "box_rpb": "Plain DETR's box-to-pixel relative position bias in the decoder's cross-attention (plain "
                       "DETR only; changes the inference network)",
            "no_aux_loss": "no auxiliary decoder losses", "eval": "only evaluate --resume/--weights",
            "no_random_crop": "no random-crop augmentation"}
# Official flags that do not apply here: accepted so old command lines run, and reported.
IGNORED = {"world_size": None, "dist_url": None, "start_epoch": None, "remove_difficult": None}
DATASET_FILES = get_args(DatasetFile)
PATH_FLAGS = {"data", "coco_path", "train_images", "train_annotations", "val_images", "val_annotations", "output_dir",
              "resume", "weights", "frozen_weights", "coco_panoptic_path", "train_panoptic", "val_panoptic"}
# The groups commands are built from; a FLAGS row in no group is a training flag (only `detr train` reads it).
WEIGHTS_FLAGS = ("weights", "device")
FILE_MODEL_FLAGS = ("dilation", "nheads")  # with --model: what an official weights file cannot tell
MODEL_FLAGS = ("backbone", "position_embedding", "enc_layers", "dec_layers", "dim_feedforward", "hidden_dim",
               "num_queries", "class_loss", "num_classes", "pre_norm", "masks", "box_rpb")
DATA_FLAGS = ("data", "data_format", "coco_path", "dataset_file", "coco_panoptic_path", "train_images",
              "train_annotations", "val_images", "val_annotations", "train_panoptic", "val_panoptic", "num_workers")
SIZE_FLAGS = ("max_size", "val_scale")
# The flags that give `detr train` its data; `has_data` reads those the parser has (a `--data DIR` added to
# DATA_FLAGS and FLAGS counts once it is here).
DATA_SOURCES = ("data", "coco_path", "train_annotations", "val_annotations")
# Old spellings -> the flag they stand for. One spelling per idea: underscores, as the official flags.
OLD_SPELLINGS = {"--max-size": "max_size", "--size": "val_scale", "--output": "output_dir"}
_SPEC = {name: (kind, text) for name, kind, text in FLAGS}
_MODEL_HELP = ("architecture preset (model family, backbone, dilation; conditional_detr_*: Conditional DETR with 300 "
               "queries and the focal class head); explicit flags win. For an official weights file: the model it "
               "is, for what its shapes cannot tell (DC5)")
_SCALES_HELP = "training short sides (default: the paper's 480 512 ... 800); the largest is the validation one"


class OldSpelling(argparse.Action):
    """An old spelling of a flag: stores into the flag's field and logs a deprecation warning once per parse."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.warned = new, False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if not self.warned:  # parsers are built per command line: once per command line
            log.warning("%s is deprecated: use %s", option_string, self.new)
            self.warned = True
        setattr(namespace, self.dest, values)


def add_old_spelling(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, name: str,
                     kind: Any = str) -> None:
    """Accept `old` for --`name` (hidden from --help), with a deprecation warning."""
    parser.add_argument(old, dest=name, type=kind, action=OldSpelling, new=f"--{name}", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


def make_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A command's parser: no prefix matching (`--data` is not read as `--dataset_file`)."""
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def parse_and_run(argv: list[str], prog: str, description: str | None,
                  add_arguments: Callable[[argparse.ArgumentParser], None],
                  run: Callable[[argparse.Namespace], int]) -> int:
    """A sub-command's `main`: its parser from `add_arguments`, then `run` on the parsed arguments."""
    parser = make_parser(prog, description)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str],
              defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None) -> None:
    """Add the FLAGS and SWITCHES `names` (with their old spellings); `defaults` and `helps` replace theirs (a
    help given here is shown without the default)."""
    defaults, helps = defaults or {}, helps or {}
    shown = {k: v for sec in Config().to_dict().values() for k, v in sec.items()}
    for name in names:
        if name in SWITCHES:
            parser.add_argument(f"--{name}", action="store_true", default=None, help=helps.get(name, SWITCHES[name]))
            continue
        kind, text = _SPEC[name]
        default = defaults.get(name)
        shown_default = None if name in helps else default if name in defaults else shown.get(name)
        text = helps.get(name, text)  # a command's own help says its own default
        choices = literal_choices(name) or (DATASET_FILES if name == "dataset_file" else ())
        metavar = ("{" + ",".join(choices) + "}" if choices else {int: "N", float: "X"}.get(kind)
                   or ("PATH" if name in PATH_FLAGS else "NAME"))
        parser.add_argument(f"--{name}", type=kind, default=default, metavar=metavar,
                            help=f"{text} (default: {shown_default})" if shown_default not in (None, "") else text)
        for old in (o for o, new in OLD_SPELLINGS.items() if new == name):
            add_old_spelling(parser, old, name, kind)


def add_weights_flags(parser: argparse.ArgumentParser, weights: str | None = None, device: str | None = None,
                      weights_help: str | None = None) -> None:
    """--weights and --device, then the model flags an official weights file needs: --model, --dilation, --nheads."""
    group = parser.add_argument_group("weights")
    add_flags(group, WEIGHTS_FLAGS, {"weights": weights, "device": device},
              {"weights": weights_help} if weights_help else None)
    group.add_argument("--model", choices=list(MODELS), default=None, help=_MODEL_HELP)
    add_flags(group, FILE_MODEL_FLAGS)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The architecture flags (beyond the weights group's --model, --dilation, --nheads)."""
    add_flags(parser.add_argument_group("model"), MODEL_FLAGS)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Where the data is (COCO folder or custom images and annotations) and how it is loaded."""
    add_flags(parser.add_argument_group("data"), DATA_FLAGS)


def add_size_flags(parser: argparse.ArgumentParser, scales: bool = True, helps: dict[str, str] | None = None) -> None:
    """Image sizes: --val_scale (validation and inference short side), --max_size; with `scales` also --scales."""
    group = parser.add_argument_group("image sizes")
    if scales:
        group.add_argument("--scales", type=int, nargs="+", default=None, metavar="N", help=_SCALES_HELP)
    add_flags(group, SIZE_FLAGS, helps=helps)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """`detr train`'s parser: every official flag (the groups, then the training flags)."""
    parser = make_parser(prog, description)
    add_weights_flags(parser)
    add_model_flags(parser)
    add_data_flags(parser)
    add_size_flags(parser)
    grouped = {*WEIGHTS_FLAGS, *FILE_MODEL_FLAGS, *MODEL_FLAGS, *DATA_FLAGS, *SIZE_FLAGS}
    add_flags(parser.add_argument_group("training"), [n for n in [*_SPEC, *SWITCHES] if n not in grouped])
    parser.add_argument("--logger", choices=LOGGERS, nargs="+", action="extend", default=None, metavar="NAME",
                        help="experiment logging under --output_dir, one or several (the flag may repeat): "
                             "tensorboard, wandb (offline unless WANDB_MODE says otherwise), mlflow (a local store "
                             "unless MLFLOW_TRACKING_URI is set); each needs its extra, e.g. "
                             "pip install 'detr-aligned[tensorboard]'")
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
    # imported here, after parsing: it brings torch, which the parsers and --help do not need
    from ..training.options import config_from_options

    return config_from_options(given_flags(args), preset)


def _check_dataset_file(args: argparse.Namespace) -> None:
    """The official --dataset_file: coco_panoptic goes with --coco_panoptic_path, and only it."""
    kind, panoptic = getattr(args, "dataset_file", None), getattr(args, "coco_panoptic_path", None)
    if kind not in (None, *DATASET_FILES):
        raise ValueError(f"--dataset_file {kind}: must be one of {', '.join(DATASET_FILES)}; for other data use "
                         "--train_images/--train_annotations/--val_images/--val_annotations (and --train_panoptic/"
                         "--val_panoptic for panoptic PNG folders)")
    if kind == "coco_panoptic" and not panoptic:
        raise ValueError("--dataset_file coco_panoptic needs --coco_panoptic_path (the folder of annotations/"
                         "panoptic_{train,val}2017.json and panoptic_{train,val}2017/)")
    if panoptic and kind != "coco_panoptic":
        raise ValueError(f"--coco_panoptic_path {panoptic} is read with --dataset_file coco_panoptic "
                         "(as the official command line); add it")


def _check_ignored(args: argparse.Namespace) -> None:
    for name in IGNORED:
        if getattr(args, name, None):
            log.warning("--%s is ignored: torchrun sets up processes, --resume sets the epoch", name)
        if hasattr(args, name):
            setattr(args, name, None)


def has_data(args: argparse.Namespace) -> bool:
    """Whether the command line names training or validation data (DATA_SOURCES)."""
    return any(getattr(args, k, None) for k in DATA_SOURCES)


def require_data(args: argparse.Namespace) -> None:
    """`detr train` needs data: a ValueError naming the data flags and `detr demo` when none is given."""
    if has_data(args):
        return
    named = {"coco_path": "--coco_path DIR", "train_annotations": "--train_images DIR --train_annotations FILE "
             "(and --val_images DIR --val_annotations FILE)", "val_annotations": ""}  # val data alone: --eval
    flags = [named.get(k, f"--{k} DIR") for k in DATA_SOURCES if hasattr(args, k) and named.get(k) != ""]
    raise ValueError(f"no data: give {', or '.join(flags)}; to try DETR on the built-in demo dataset, run "
                     "`detr demo`")
