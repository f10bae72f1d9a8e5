"""`detr eval`: COCO bbox AP of a checkpoint on a validation set (all 12 numbers); with masks also mask AP and,
on panoptic data, PQ / SQ / RQ."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import Config, ModelConfig
from . import show_progress
from .flags import (
    add_data_flags,
    add_flags,
    add_model_flags,
    add_old_spelling,
    add_size_flags,
    add_weights_flags,
    config_from_args,
    given_flags,
    make_parser,
)


def build_eval_parser() -> argparse.ArgumentParser:
    """`detr eval`'s flags: the weights, the model flags that files cannot tell, the data, the sizes, the run's."""
    parser = make_parser("detr eval", "Evaluate a checkpoint (COCO bbox AP, all 12 numbers; a segmentation model "
                                      "also mask AP and, on panoptic data, PQ). The model comes "
                                      "from the checkpoint (its config, its official args, its published name or "
                                      "its shapes; model flags given here win); data flags override its data paths.")
    add_weights_flags(parser, weights_help="the checkpoint to evaluate: ours, official, a transformers folder, a "
                                           "hub id or a published name")
    add_old_spelling(parser, "--resume", "weights")
    add_model_flags(parser)
    add_data_flags(parser)
    add_size_flags(parser, helps={"val_scale": "evaluation short side (default: the checkpoint's)",
                                  "max_size": "longest image side (default: the checkpoint's)"})
    add_flags(parser.add_argument_group("output"), ["output_dir", "amp"],
              helps={"output_dir": "where eval.json and the detections go (default: next to --weights)"})
    return parser


def evaluate_checkpoint(cfg: Config, path: str, **options: Any) -> dict[str, Any]:
    """`detr.evaluation.evaluate.evaluate_checkpoint`, imported when an evaluation starts (it brings torch)."""
    from ..evaluation.evaluate import evaluate_checkpoint as run_evaluation

    return run_evaluation(cfg, path, **options)


def main(argv: list[str]) -> int:
    """`detr eval --weights FILE [data flags]`: COCO bbox AP of a checkpoint on the val set."""
    args = build_eval_parser().parse_args(argv)
    from ..weights.hub import is_hf_repo_id  # after parsing: it brings torch, which --help does not need

    path = args.weights or ""
    hub_id = is_hf_repo_id(path) and not Path(path).exists()  # outputs next to the file, else here
    cfg = config_from_args(args, {"output_dir": ("." if hub_id else str(Path(path).parent)) if path else ""})
    return evaluate(cfg, args, path, "--weights")


def evaluate(cfg: Config, args: argparse.Namespace, path: str, flag: str) -> int:
    """Evaluate the checkpoint `path` (named by `flag` in errors); model flags given in `args` win."""
    if not path:
        raise ValueError(f"{flag} FILE is needed: the checkpoint to evaluate")
    from ..evaluation.evaluate import SIZE_FIELDS

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    given = given_flags(args)
    overrides = {k: getattr(cfg.model, k) for k in given if k in fields}
    # image sizes not given: the checkpoint's own (a model validated at 128 px scores ~0 at the default 800)
    sizes_from_checkpoint = [k for k in SIZE_FIELDS if k not in given]
    evaluate_checkpoint(cfg, path, model=given.get("model"), progress=show_progress(),
                        sizes_from_checkpoint=sizes_from_checkpoint, **overrides)
    return 0
