"""The `detr` command: a dispatcher to sub-commands, each imported only when it is used.

A sub-command is a module `detr.cli.<name>` with `main(argv: list[str]) -> int | None` that
parses its own arguments with a parser from `detr.cli.flags` (shared flag groups, one spelling per
flag, no prefix matching). To add one, add a line to COMMANDS. Only this module sets up logging
(the library logs to `detr.*` loggers) and turns errors into a one-line message and an exit
code (2 for bad input, 130 for Ctrl-C).

Building a parser imports no torch, so that `detr --help` and `detr CMD --help` start fast: a command
module imports what brings torch (inference, training, checkpoint, ...) inside the functions that run
after parsing (tests/cli/test_cli_help.py checks it).
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> one-line help; the command is `detr.cli.<name>.main`
COMMANDS: dict[str, str] = {
    "train": "train a model on COCO or your own COCO-format data (official DETR flags)",
    "eval": "evaluate a checkpoint (COCO bbox AP) on the val set",
    "demo": "make the demo dataset, train a small model, evaluate, draw predictions",
    "predict": "detect objects in images: annotated PNGs + COCO-results JSON",
    "explain": "attention maps: decoder per detected object, encoder at a pixel",
    "export": "export a model to ONNX (dynamic batch and image size)",
    "plot": "training curves (loss, class error, AP) of one or several runs",
    "convert": "weights to a transformers folder, or from PaddleDetection .pdparams",
}

USAGE = """usage: detr [--quiet | --verbose] <command> [options]     (detr <command> --help for its options)

commands:
{commands}

--quiet (anywhere on the line) shows only warnings and errors, and no progress bars; --verbose
also shows every training step's loss.

An official DETR command line works with `detr train` in front of its flags, e.g.
  detr train --coco_path /data/coco --output_dir runs/r50 --batch_size 2
  torchrun --nproc_per_node=8 -m detr train --coco_path /data/coco --output_dir runs/r50
"""


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {n:<{width}}  {h}" for n, h in COMMANDS.items()))


def show_progress() -> bool:
    """Progress bars are for runs that log INFO (not --quiet); tqdm also hides them off a terminal."""
    return logging.getLogger("detr").isEnabledFor(logging.INFO)


def setup_logging(level: int = logging.INFO) -> None:
    """`detr.*` log records of `level` and up to stderr, one line each."""
    logger = logging.getLogger("detr")
    logger.setLevel(level)
    if not any(getattr(h, "_detr_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._detr_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `detr` and `python -m detr`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING if "--quiet" in argv else logging.DEBUG if "--verbose" in argv else logging.INFO
    argv = [a for a in argv if a not in ("--quiet", "--verbose")]
    setup_logging(level)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0].startswith("-"):  # an official command line (flags only) means `train`
        argv = ["train", *argv]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detr: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        command = importlib.import_module(f"detr.cli.{name}").main
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
