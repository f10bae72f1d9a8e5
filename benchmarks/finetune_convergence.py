"""Fine-tuning benchmark: what the training options buy when a trained detector learns new classes (issue #24).

    python benchmarks/finetune_convergence.py --sizes 500 --rows vanilla fast groups mal iou_match one2many \\
        mosaic lr2x --root runs/finetune
    python benchmarks/finetune_convergence.py --source_set other --sizes 500 --rows vanilla fast \\
        --root runs/finetune-from-other
    python benchmarks/finetune_convergence.py --target_set other_flat --sizes 500 --rows vanilla fast \\
        --root runs/finetune-to-flat
    python benchmarks/finetune_convergence.py --smoke     # tiny data, a few iterations: a check of the script

This is the regime of `detr train --data DIR --weights detr_r50`: the whole detector is trained already, only
the class head is new. The source detector is convergence.py's model (plain DETR, softmax head, tiny trunk,
d=128, 3+3 layers, 16 queries) trained once on the demo's shapes with `--recipe fast` and cached under --root.
It is then fine-tuned on `other_shapes.py`'s set (five other classes, other shapes, textured backgrounds) with
--sizes training images and one 200-image val set, at the official fine-tuning rates (1e-4, backbone 1e-5),
batch 8, a constant rate, every row through `detr.training.train.train`. Rows are option overrides on top of
that (`ROWS`); the table counts iterations, as convergence.py's does, and is written to --root/finetune.md with
a plot per size. Runs are cached by a hash of their options, data and source (convergence.train_run).

So that a recipe is not tuned to one pair of sets, `--source_set` and `--target_set` choose others (SETS):
`--source_set other` trains the source on other_shapes.py's textured set (5,000 images) and fine-tunes it on the
demo's shapes; `--target_set other_flat` fine-tunes the demo's source on other_shapes.py's classes drawn on the
demo's flat backgrounds, where the trunk's features already fit and only the classes are new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convergence as conv  # noqa: E402  (puts this checkout's src on sys.path)
from other_shapes import make_other_shapes  # noqa: E402

from detr.checkpoint import load_checkpoint, write_bytes  # noqa: E402
from detr.data.demo import make_demo_dataset  # noqa: E402

SOURCE_ITERATIONS, SOURCE_EVAL_EVERY = 2500, 500
FINETUNE: dict[str, Any] = {**conv.SETTINGS, "lr": 1e-4, "lr_backbone": 1e-5}  # the official fine-tuning rates
SIGMOID = {"set_cost_class": 2.0}  # the sigmoid heads' class cost and weight (Deformable DETR's 2)
ROWS: dict[str, dict[str, Any]] = {
    "vanilla": {},  # the official recipe from the trained weights
    "fast": {"num_groups": 3, "ema_decay": 0.9995},  # --recipe fast as it stands from trained weights
    "groups": {"num_groups": 3},  # Group DETR
    "ema": {"ema_decay": 0.999},  # the weight average alone, at a horizon of ~1,000 steps
    "mal": {"class_loss": "mal", **SIGMOID},  # DEIM's matchability-aware loss
    "focal": {"class_loss": "focal", **SIGMOID},  # a sigmoid head without MAL's IoU targets
    "iou_match": {"matcher_iou_power": 1.0},  # Stable-DINO / Align-DETR: the class cost reads p * IoU
    "one2many": {"k_one2many": 2},  # MS-DETR: each layer also matched to 2 copies of the ground truth
    "mosaic": {"mosaic_prob": 0.5},  # DEIM's dense one-to-one: half the images a mosaic of 4
    "lr2x": {"lr": 2e-4, "lr_backbone": 2e-5},  # twice the official rates
    "trunk_lr": {"lr_backbone": 1e-4},  # the backbone at the transformer's rate (new images, new textures)
    "trunk_2x": {"lr_backbone": 2e-4},  # the backbone at twice the transformer's rate
    "trunk_4x": {"lr_backbone": 4e-4},  # ... four times
    "trunk_8x": {"lr_backbone": 8e-4},  # ... eight times
    "rates_2x": {"lr": 2e-4, "lr_backbone": 2e-4},  # both at twice the official transformer's rate
    "crop": {"random_crop": True},  # the paper's random resize + crop, on under --data
}
SMOKE_SOURCE = (20, 10)
SMOKE_DATA = {"num_val": 8, "image_size": 64}
# The synthetic sets (name -> description), and for each --source_set, the set its rows fine-tune on by default.
SETS = {"shapes": "the demo's shapes (4 classes, flat backgrounds)",
        "other": "other_shapes.py (5 classes, textured backgrounds)",
        "other_flat": "other_shapes.py's 5 classes on flat backgrounds"}
TARGET = {"shapes": "other", "other": "shapes", "other_flat": "shapes"}


def make_set(name: str, root: Path, num_train: int, num_val: int, image_size: int, seed: int) -> dict[str, str]:
    """Write (or reuse) the set `name` of SETS under root; its train/val image and annotation paths."""
    if name.startswith("other"):
        return make_other_shapes(root, num_train, num_val, image_size, seed=seed, flat=name == "other_flat")
    paths = make_demo_dataset(root, num_train, num_val, image_size, seed=seed)
    return {k: str(v) for k, v in paths.items() if k != "root"}


def parse_args(argv: list[str] | None, rows: dict[str, dict[str, Any]] = ROWS, sizes: list[int] | None = None,
               iterations: int = 1200, eval_every: int = 150, root: str = "runs/finetune",
               source_sets: bool = False) -> argparse.Namespace:
    """The command line of this benchmark (and of backbone_convergence.py, with its own rows and defaults);
    `source_sets`: with --source_set and --target_set (the sets of this benchmark's source and rows)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=["vanilla", "fast"], metavar="NAME",
                   help=f"rows to run (default: vanilla fast; known: {', '.join(rows)}; a row a+b combines rows)")
    p.add_argument("--sizes", nargs="+", type=int, default=sizes or [500], help="training images of the new set")
    p.add_argument("--seeds", nargs="+", type=int, default=[conv.FIRST_SEED], help="training seeds (default 42)")
    p.add_argument("--iterations", type=int, default=None, help=f"iterations per run (default {iterations})")
    p.add_argument("--eval_every", type=int, default=None, help=f"evaluate every this many iterations "
                                                                f"(default {eval_every})")
    p.add_argument("--root", default=None, help=f"cache folder (default {root}, {root}-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny data, a few iterations: check the script")
    p.add_argument("--force", action="store_true", help="run again even where a run's JSON has the same settings")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as convergence.py)")
    p.add_argument("--table_only", action="store_true",
                   help="train nothing: the tables and plots of every run cached under --root")
    if source_sets:
        p.add_argument("--source_set", choices=list(SETS), default="shapes",
                       help="the set the source detector learns (default shapes: the demo's)")
        p.add_argument("--target_set", choices=list(SETS), default=None,
                       help="the set the rows fine-tune on (default: other for the shapes source, else shapes)")
    args = p.parse_args(argv)
    if source_sets:
        args.target_set = args.target_set or TARGET[args.source_set]
        if (args.source_set, args.target_set) != ("shapes", "other"):
            root = f"{root}-{args.source_set}-to-{args.target_set}"
    for row in args.rows:
        unknown = [part for part in row.split("+") if part not in rows]
        if unknown:
            p.error(f"--rows: unknown row(s) {unknown}; known: {', '.join(rows)}")
    args.iterations = args.iterations or (conv.SMOKE_ITERATIONS if args.smoke else iterations)
    args.eval_every = args.eval_every or (conv.SMOKE_EVAL_EVERY if args.smoke else eval_every)
    args.root = Path(args.root or (f"{root}-smoke" if args.smoke else root))
    if args.iterations % args.eval_every:
        p.error(f"--iterations ({args.iterations}) must be a multiple of --eval_every ({args.eval_every})")
    return args


def overrides_of(row: str, rows: dict[str, dict[str, Any]] = ROWS) -> dict[str, Any]:
    """The options of a row of `rows`; `a+b` merges rows a and b."""
    merged: dict[str, Any] = {}
    for part in row.split("+"):
        merged.update(rows[part])
    return merged


def size_runs(args: argparse.Namespace, size: int, extra: dict[str, int], settings: dict[str, Any],
              data: dict[str, Any], overrides: Callable[[str], dict[str, Any]], target: str = "other") -> tuple[
                  dict[str, list[dict[str, Any]]], argparse.Namespace, dict[str, str]]:
    """Every row and seed trained (or read from the cache under --root/n<size>) on `size` training images of
    the set `target` (SETS); returns {row: [result per seed]}, the runs' arguments and the data's paths."""
    paths = make_set(target, args.root / f"data_{size}", size, extra["num_val"], extra["image_size"], seed=1)
    size_args = argparse.Namespace(**{**vars(args), "root": args.root / f"n{size}"})
    size_args.root.mkdir(parents=True, exist_ok=True)
    rows = {row: [conv.train_run(row, seed, size_args, settings, data, paths, overrides=overrides(row))
                  for seed in args.seeds] for row in args.rows}
    return rows, size_args, paths


def write_report(root: Path, name: str, report: str, results: dict[int, dict[str, list[dict[str, Any]]]]) -> None:
    """root/<name>.md, a plot per size (root/<name>_<size>.png), and the report printed."""
    write_bytes(root / f"{name}.md", report.encode())
    for size, rows in results.items():
        conv.plot(rows, root / f"{name}_{size}.png")
    print(report)


def source_detector(args: argparse.Namespace) -> tuple[str, str]:
    """(checkpoint path, settings hash) of the trained source detector, trained once and cached."""
    settings, data = (conv.SMOKE_SETTINGS, conv.SMOKE_DATA) if args.smoke else (conv.SETTINGS, conv.DATA)
    iterations, eval_every = SMOKE_SOURCE if args.smoke else (SOURCE_ITERATIONS, SOURCE_EVAL_EVERY)
    source_args = argparse.Namespace(root=args.root / "source", iterations=iterations, eval_every=eval_every,
                                     force=False, threads=args.threads)
    source_args.root.mkdir(parents=True, exist_ok=True)
    if args.source_set == "shapes":
        paths = conv.prepare_data(source_args.root, data)
    else:  # the set's name enters the cache key; the default's key stays as it was
        paths = make_set(args.source_set, source_args.root / f"data_{args.source_set}", data["num_train"],
                         data["num_val"], data["image_size"], data["seed"])
        data = {**data, "set": args.source_set}
    result = conv.train_run("fast", conv.FIRST_SEED, source_args, settings, data, paths, overrides=conv.FAST)
    return str(source_args.root / "runs" / f"fast-seed{conv.FIRST_SEED}" / "checkpoint.pth"), result["hash"]


def weights_digest(checkpoint: str) -> str:
    """A digest of a checkpoint's model weights. The source is cached by the settings that trained it; its
    weights also depend on the code (the order of float sums), so the fine-tuning runs' key names them too."""
    state = load_checkpoint(checkpoint)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def finetune_runs(args: argparse.Namespace) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{size: {row: [result per seed]}}, each run trained or read from its cache."""
    checkpoint, source_hash = source_detector(args)
    source_weights = weights_digest(checkpoint)
    base = {**(conv.SMOKE_SETTINGS if args.smoke else FINETUNE), "lr": 1e-4, "lr_backbone": 1e-5,
            "weights": checkpoint}
    extra = SMOKE_DATA if args.smoke else {"num_val": 200, "image_size": 128}
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for size in args.sizes:
        data = {"num_train": size, **extra, "seed": 1, "source": source_hash, "source_weights": source_weights}
        if args.target_set != TARGET[args.source_set]:  # the source set's usual target is named by its hash
            data["set"] = args.target_set
        results[size] = size_runs(args, size, extra, base, data, overrides_of, args.target_set)[0]
    return results


def cached_runs(root: Path) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{size: {row: [result per seed]}} of every run JSON under root/n<size>/ (vanilla first, then by name)."""
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for folder in sorted(root.glob("n*"), key=lambda f: int(f.name[1:]) if f.name[1:].isdigit() else -1):
        if not folder.name[1:].isdigit():
            continue
        runs = [json.loads(f.read_text()) for f in sorted(folder.glob("*-seed*.json"))]
        rows: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(runs, key=lambda r: (r["recipe"] != "vanilla", r["recipe"], r["seed"])):
            rows.setdefault(r["recipe"], []).append(r)
        if rows:
            results[int(folder.name[1:])] = rows
    return results


def table(results: dict[int, dict[str, list[dict[str, Any]]]], args: argparse.Namespace, model: str,
          title: str = "Fine-tuning benchmark", target: str = "other") -> str:
    """One markdown table per training-set size: final AP, AP50 and iterations to vanilla's final AP."""
    lines = [f"# {title} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {conv._commit()})", "",
             f"{model}. Trained on {SETS[target]}, 200 val images, for "
             f"{args.iterations} iterations of batch 8 at lr 1e-4 / backbone 1e-5 unless a row says otherwise, "
             f"constant; val COCO AP every {args.eval_every} iterations. Machine: {conv._cpu_name()}, "
             f"{args.threads} torch thread(s).", ""]
    for size, rows in results.items():
        vanilla = rows.get("vanilla")
        target = statistics.fmean(r["curve"][-1]["AP"] for r in vanilla) if vanilla else None
        lines += [f"## {size} training images", "",
                  "| row | overrides | seeds | final AP | final AP50 | best AP | iterations to vanilla's final AP "
                  "(interpolated) | s / iteration |", "|---|---|---|---|---|---|---|---|"]
        for row, runs in rows.items():
            curves = [r["curve"] for r in runs]
            reach = conv._interpolated([conv.crossing(c, "AP", target) for c in curves]) if target else "n/a"
            lines.append(f"| {row} | `{runs[0]['overrides'] or '(official)'}` | "
                         f"{', '.join(str(r['seed']) for r in runs)} | {conv._spread([c[-1]['AP'] for c in curves])} | "
                         f"{conv._spread([c[-1]['AP50'] for c in curves])} | "
                         f"{conv._spread([max(p['AP'] for p in c) for c in curves])} | {reach} | "
                         f"{conv._spread([r['seconds_per_iteration'] for r in runs])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Run (or reuse) the source and every fine-tuning run asked for; write and print the tables and plots."""
    args = parse_args(argv, source_sets=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = cached_runs(args.root) if args.table_only else finetune_runs(args)
        if not results:
            raise SystemExit(f"--table_only: no run JSON under {args.root}/n<size>/")
    finally:
        torch.set_num_threads(threads)
    model = (f"Source: plain DETR (tiny trunk, d=128, 3+3 layers, 16 queries, softmax head) trained "
             f"{SOURCE_ITERATIONS} iterations on {SETS[args.source_set]} with --recipe fast; its class head is "
             "replaced where the class count differs")
    write_report(args.root, "finetune", table(results, args, model, target=args.target_set), results)
    return results


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    main()
