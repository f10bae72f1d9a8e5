"""The `detr` command: a dispatcher to sub-commands, each imported only when it is used.

A sub-command is a function `(argv: list[str]) -> int | None` that parses its own
arguments. To add one, add a line to COMMANDS. Only this module turns errors into a
one-line message and an exit code (2 for bad input, 130 for Ctrl-C).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("detr.cli_train", "train_command", "train a model (official DETR flags; no data: the demo dataset)"),
    "eval": ("detr.cli_train", "eval_command", "evaluate a checkpoint (COCO bbox AP) on the val set"),
    "demo": ("detr.demo", "demo_command", "make the demo dataset, train a small model, evaluate, draw predictions"),
    "predict": ("detr.commands", "predict_command", "detect objects in images: annotated PNGs + COCO-results JSON"),
    "explain": ("detr.commands", "explain_command", "attention maps: decoder per detected object, encoder at a pixel"),
    "export": ("detr.commands", "export_command", "export a model to ONNX (dynamic batch and image size)"),
    "plot": ("detr.commands", "plot_command", "training curves (loss, class error, AP) of one or several runs"),
}

USAGE = """usage: detr <command> [options]     (detr <command> --help for its options)

commands:
{commands}

An official DETR command line works with `detr train` in front of its flags, e.g.
  detr train --coco_path /data/coco --output_dir runs/r50 --batch_size 2
  torchrun --nproc_per_node=8 -m detr train --coco_path /data/coco --output_dir runs/r50
"""


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {n:<{width}}  {h}" for n, (_, _, h) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `detr` and `python -m detr`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0].startswith("-"):  # an official command line (flags only) means `train`
        argv = ["train", *argv]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detr: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    try:
        command = getattr(importlib.import_module(module), function)
        return int(command(rest) or 0)
    except KeyboardInterrupt:
        print(f"detr {name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:  # CheckpointError, DatasetError are ValueErrors
        print(f"detr {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    raise SystemExit(main())
