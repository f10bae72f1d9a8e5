"""`detr train`: the official DETR flags -> a `Config` -> `train` (or, with --eval, `detr eval`'s evaluation)."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..validation import validate_config
from . import show_progress
from .eval import evaluate
from .flags import build_parser, config_from_args, require_data


def train(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """`detr.training.train.train`, imported when a run starts: it brings torch, which --help does not need."""
    from ..training.train import train as run_training

    return run_training(cfg, progress=progress)


def main(argv: list[str]) -> int:
    """`detr train [flags]`: train (or with --eval, evaluate) and print a summary."""
    parser = build_parser("detr train", "Train DETR on COCO (--coco_path) or your own COCO-format data "
                                        "(--train_images/--train_annotations/--val_images/--val_annotations). "
                                        "Flags are the official ones; `detr demo` trains on a built-in dataset.")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.eval:
        return evaluate(cfg, args, cfg.train.resume or cfg.train.weights, "--resume/--weights")
    validate_config(cfg)  # a bad flag is named before the missing data
    require_data(args)
    train(cfg, progress=show_progress())
    return 0
