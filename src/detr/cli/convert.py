"""`detr convert`: weights between ecosystems.

    detr convert --to hf OUT_DIR --weights FILE          ours/official -> a transformers folder
    detr convert --from paddle FILE.pdparams --output OUT.pth [--nheads N]   PaddleDetection -> our checkpoint
"""

from __future__ import annotations

import argparse

from ..registry import MODELS
from . import show_progress
from .flags import parse_and_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", choices=["hf"], help="write PATH (a folder) in this format")
    direction.add_argument("--from", dest="source", choices=["paddle"], help="read PATH (a file) in this format")
    parser.add_argument("path", help="--to: the folder to write; --from: the file to read")
    parser.add_argument("--weights", default=None, help="--to: the checkpoint to convert (ours, official or a name)")
    parser.add_argument("--output", default=None, help="--from: the checkpoint to write (.pth or .safetensors)")
    parser.add_argument("--model", choices=list(MODELS), default=None,
                        help="--to: for an official weights file, the architecture it is (gives DC5 dilation)")
    parser.add_argument("--nheads", type=int, default=None,
                        help="attention heads, which the weights do not tell: --from paddle (default 8, "
                             "PaddleDetection's DETR configs), --to hf for an official file (default 8)")


def run(args: argparse.Namespace) -> int:
    """Convert weights in the direction the flags say."""
    if args.nheads is not None and args.nheads < 1:
        raise ValueError(f"--nheads must be >= 1, got {args.nheads}")
    if args.to == "hf":
        return _to_hf(args)
    return _from_paddle(args)


def _to_hf(args: argparse.Namespace) -> int:
    """Our checkpoint (or an official file, a published name) -> a folder that transformers' from_pretrained loads."""
    # imported here, not at the top: they bring torch, which the parser and --help do not need
    from ..data.transforms import val_short_side
    from ..inference.detector import default_class_names
    from ..weights.loading import load_pretrained
    from ..weights.to_hf import hf_config, save_hf_folder

    if not args.weights:
        raise ValueError("--to hf needs --weights FILE: the checkpoint to convert")
    heads = {} if args.nheads is None else {"nheads": args.nheads}
    net, cfg = load_pretrained(args.weights, model=args.model, progress=show_progress(), **heads)
    names = cfg.data.class_names or default_class_names(cfg.model.num_classes)
    out = save_hf_folder(args.path, net.state_dict(), cfg.model, names, val_short_side(cfg.data), cfg.data.max_size, argument="PATH")
    print(f"wrote {out}/config.json, model.safetensors, preprocessor_config.json "
          f"(transformers {hf_config(cfg.model)['architectures'][0]})")
    return 0


def _from_paddle(args: argparse.Namespace) -> int:
    """PaddleDetection `.pdparams` (read without paddle, running nothing) -> our checkpoint with its config."""
    from ..checkpoint import output_file, save_checkpoint
    from ..weights.from_paddle import load_pdparams

    if args.output is None:
        raise ValueError("--from paddle needs --output OUT.pth (or .safetensors): the checkpoint to write")
    output = output_file(args.output)
    state, config = load_pdparams(args.path, nheads=args.nheads)
    save_checkpoint(output, {"model": state, "config": config.to_dict()})
    print(f"wrote {output}: {config.model.backbone} DETR, {config.model.nheads} heads, "
          f"{config.model.num_classes} classes"
          + (" (COCO category ids)" if config.model.num_classes == 91 else ""))
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr convert", __doc__, add_arguments, run)
