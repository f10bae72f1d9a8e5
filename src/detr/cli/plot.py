"""`detr plot`: training curves (loss, class error, AP) of one or several runs, as one PNG, and the per-class AP
and AP50 of their last evaluations side by side in a second PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .flags import parse_and_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders holding log.txt (or log files)")
    parser.add_argument("--output", default="curves.png",
                        help="PNG file to write (default curves.png); the per-class AP goes next to it, "
                             "as NAME_per_class.png")


def per_class_history(run: str) -> list[tuple[float, list[dict[str, Any]]]]:
    """(epoch, per-class AP records) of each evaluation in a run's log.txt (test_per_class_ap)."""
    from ..inference.visualize import read_log  # its module brings torch, which --help does not need

    log = Path(run) / "log.txt" if Path(run).is_dir() else Path(run)
    if not log.is_file():
        return []
    return [(float(r.get("epoch", i)), r["test_per_class_ap"]) for i, r in enumerate(read_log(log))
            if r.get("test_per_class_ap")]


def per_class_records(run: str) -> list[dict[str, Any]] | None:
    """The per-class AP of a run's last evaluation: RUN/eval/per_class.json, else the last log.txt record's
    test_per_class_ap; None when the run has neither."""
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    path = folder / "eval" / "per_class.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg}); expected the per-class records of `detr eval`") from None
    history = per_class_history(run)
    return history[-1][1] if history else None


def run(args: argparse.Namespace) -> int:
    """Draw loss, class error and AP over epochs of the given runs into one PNG, and their per-class AP."""
    # imported here, not at the top: they bring torch and matplotlib, which the parser and --help do not need
    from ..checkpoint import output_file
    from ..evaluation.plots import plot_per_class_runs
    from ..inference.visualize import plot_logs

    output = output_file(args.output)
    print(f"detr plot: wrote {plot_logs(args.runs, output)}")
    per_class = {run: records for run in args.runs if (records := per_class_records(run))}
    if per_class:
        history = {run: found for run in args.runs if (found := per_class_history(run))}
        path = plot_per_class_runs(per_class, output.with_name(f"{output.stem}_per_class.png"), history)
        print(f"detr plot: wrote {path}")
    else:
        print("detr plot: no per-class AP in these runs (no eval/per_class.json, no test_per_class_ap in log.txt)")
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr plot", __doc__, add_arguments, run)
