"""`detr train`: the official DETR flags -> a `Config` -> `train` (or, with --eval, `detr eval`'s evaluation)."""

from __future__ import annotations

from ..presets import DEMO_PRESET
from ..training.train import train
from . import show_progress
from .eval import evaluate
from .flags import build_parser, config_from_args, has_data


def main(argv: list[str]) -> int:
    """`detr train [flags]`: train (or with --eval, evaluate) and print a summary."""
    parser = build_parser("detr train", "Train DETR. Flags are the official ones; with no dataset flags the "
                                        "built-in demo dataset and a small preset model are used.")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, None if has_data(args) else DEMO_PRESET)
    if args.eval:
        return evaluate(cfg, args, cfg.train.resume or cfg.train.weights, "--resume/--weights")
    train(cfg, progress=show_progress())
    return 0
