"""`detr plot`: training curves (loss, class error, AP) of one or several runs, as one PNG."""

from __future__ import annotations

import argparse

from ..checkpoint import output_file
from ..inference.visualize import plot_logs
from .flags import parse_and_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders holding log.txt (or log files)")
    parser.add_argument("--output", default="curves.png", help="PNG file to write (default curves.png)")


def run(args: argparse.Namespace) -> int:
    """Draw loss, class error and AP over epochs of the given runs into one PNG."""
    output = output_file(args.output)
    print(f"detr plot: wrote {plot_logs(args.runs, output)}")
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr plot", __doc__, add_arguments, run)
