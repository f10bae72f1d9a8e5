"""From-scratch benchmark with a standard trunk: DETR with a random torchvision ResNet-18 (issue #24).

    python benchmarks/scratch_convergence.py --rows vanilla fast conditional conditional_fast --root runs/scratch
    python benchmarks/scratch_convergence.py --smoke     # tiny data, a few iterations: a check of the script

The regime of `detr train --backbone resnet18 --backbone_weights none`: no pretrained weights at all, on data
harder than the demo's flat shapes (other_shapes.py: five classes, textured backgrounds; 2,000 training images,
200 val images, 128 px). Plain DETR and Conditional DETR (sigmoid focal head), each vanilla (the official rates,
the trunk at the transformer's rate as convergence.py's, frozen BatchNorm at its initial statistics) and with
`--recipe fast` as it runs from scratch (`FROM_SCRATCH`: the dense backbone warm-up, a doubled rate; query groups,
the weight average). d=128, 3+3 layers, 16 queries, batch 8, a constant rate. The table counts iterations to AP50
0.5 (the issue's target: within 3,000) and to vanilla's final AP, as convergence.py's does; warm-up steps count as
iterations. Tables and plots in --root/scratch.md and scratch_<size>.png; runs cached as convergence.py's.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convergence as conv  # noqa: E402  (puts this checkout's src on sys.path)
import finetune_convergence as ft  # noqa: E402
from other_shapes import OTHER_CLASSES  # noqa: E402

from detr.checkpoint import write_json  # noqa: E402
from detr.config import config_from_flags, recipe_options  # noqa: E402
from detr.data.loaders import build_datasets, make_loader, resolve_data  # noqa: E402
from detr.models.build import build_model  # noqa: E402
from detr.training.warmup import dense_task, warm_up_backbone  # noqa: E402

SETTINGS: dict[str, Any] = {**conv.SETTINGS, "backbone": "resnet18", "backbone_weights": "none"}
FAST = recipe_options({**SETTINGS, "recipe": "fast"})  # what --recipe fast sets for this model from scratch
ROWS: dict[str, dict[str, Any]] = {
    "vanilla": {},  # the official recipe
    "fast": FAST,
    "conditional": conv.CONDITIONAL,  # Conditional DETR with its focal head
    "conditional_fast": {**conv.CONDITIONAL, **FAST},
}
SMOKE_WARMUP = 4  # --smoke: warm-up steps where a row has a warm-up


def overrides_of(row: str, smoke: bool = False) -> dict[str, Any]:
    """The options of a row; `a+b` merges rows a and b; `smoke` shortens the warm-up."""
    merged = ft.overrides_of(row, ROWS)
    if smoke and merged.get("backbone_warmup"):
        merged["backbone_warmup"] = SMOKE_WARMUP
    return merged


def runs(args: argparse.Namespace) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{size: {row: [result per seed]}}, each run trained or read from its cache."""
    settings = {**(conv.SMOKE_SETTINGS if args.smoke else conv.SETTINGS), **SETTINGS}
    if args.smoke:
        settings.update({k: conv.SMOKE_SETTINGS[k] for k in ("scales", "max_size", "val_scale")})
    extra = ft.SMOKE_DATA if args.smoke else {"num_val": 200, "image_size": 128}
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for size in args.sizes:
        data = {"num_train": size, **extra, "seed": 1}
        results[size], size_args, paths = ft.size_runs(args, size, extra, settings, data,
                                                       lambda row: overrides_of(row, args.smoke))
        warmup = max(overrides_of(row, args.smoke).get("backbone_warmup", 0) for row in args.rows)
        if warmup:
            warmup_probe(size_args, settings, paths, warmup, data)
    return results


def pixel_accuracy(backbone: torch.nn.Module, head: torch.nn.Module, loader: Any) -> dict[str, float]:
    """The dense warm-up task's accuracy on `loader`'s images: on object pixels (the class of the smallest box
    covering the pixel) and on background pixels."""
    hits, totals = torch.zeros(2), torch.zeros(2)  # object, background
    backbone.eval()
    with torch.no_grad():
        for images, targets in loader:
            logits, labels = dense_task(backbone, head, images, targets, torch.device("cpu"))  # [B, C, H, W]
            right = logits.argmax(1) == labels  # [B, H, W]
            for i, where in enumerate((labels > 0, labels == 0)):
                hits[i] += right[where].sum()
                totals[i] += where.sum()
    return {"object_pixel_accuracy": float(hits[0] / totals[0]),
            "background_pixel_accuracy": float(hits[1] / totals[1])}


def warmup_probe(args: argparse.Namespace, settings: dict[str, Any], paths: dict[str, str], steps: int,
                 data: dict[str, Any]) -> dict[str, Any]:
    """What the fast rows' dense warm-up teaches a random ResNet-18: `steps` steps of `warm_up_backbone` from the
    model `train` builds with seed 42, then the dense task's val accuracy (cached as --root/warmup_probe.json)."""
    out = args.root / "warmup_probe.json"
    key = {"steps": steps, "data": data, "settings": settings}
    if out.is_file() and json.loads(out.read_text()).get("key") == key:
        return json.loads(out.read_text())
    cfg = resolve_data(config_from_flags({**settings, **paths}))
    torch.manual_seed(conv.FIRST_SEED)
    model = build_model(cfg.model)
    backbone, run_data = model.backbone[0], build_datasets(cfg)
    head = torch.nn.Conv2d(backbone.num_channels, cfg.model.num_classes + 1, kernel_size=1)
    loader = make_loader(run_data.train, cfg.train.batch_size, True, conv.FIRST_SEED, 0)
    last = warm_up_backbone(backbone, loader, cfg.model.num_classes, steps, torch.device("cpu"), head=head)
    record = {"key": key, "last_batch": last,
              **pixel_accuracy(backbone, head, make_loader(run_data.val, cfg.train.batch_size, False, 0, 0))}
    write_json(out, record, indent=1)
    return record


def table(results: dict[int, dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    """One markdown table per training-set size: iterations to AP50 0.5 and to vanilla's final AP, final AP."""
    lines = [f"# From-scratch benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
             f"{conv._commit()})", "",
             "DETR with a torchvision ResNet-18 from random weights (frozen BatchNorm), d=128, 3+3 layers, 16 queries, "
             f"trained on other_shapes.py (5 classes, textured backgrounds, 200 val images) for {args.iterations} "
             f"DETR iterations of batch 8 (after the warm-up, where a row has one: its steps count as iterations in "
             f"the columns), constant rate; val COCO AP every {args.eval_every} iterations. "
             f"Machine: {conv._cpu_name()}, {args.threads} torch thread(s).", ""]
    for size, rows in results.items():
        per_family: dict[bool, float] = {}  # conditional? -> the vanilla row's mean final AP
        for row, runs in rows.items():
            if not runs[0]["overrides"] or runs[0]["overrides"] == conv.CONDITIONAL:
                per_family[row.startswith("conditional")] = statistics.fmean(r["curve"][-1]["AP"] for r in runs)
        lines += [f"## {size} training images", "",
                  "| row | overrides | seeds | AP50 >= 0.5 at (interpolated) | its family's vanilla final AP at "
                  "(interpolated) | final AP | final AP50 | best AP50 |", "|---|---|---|---|---|---|---|---|"]
        for row, runs in rows.items():
            curves = [r["curve"] for r in runs]
            target = per_family.get(row.startswith("conditional"))
            reach = conv._interpolated([conv.crossing(c, "AP", target) for c in curves]) if target else "n/a"
            lines.append(f"| {row} | `{runs[0]['overrides'] or '(official)'}` | "
                         f"{', '.join(str(r['seed']) for r in runs)} | "
                         f"{conv._interpolated([conv.crossing(c, 'AP50', conv.AP50_TARGET) for c in curves])} | "
                         f"{reach} | {conv._spread([c[-1]['AP'] for c in curves])} | "
                         f"{conv._spread([c[-1]['AP50'] for c in curves])} | "
                         f"{conv._spread([max(p['AP50'] for p in c) for c in curves])} |")
        probe = args.root / f"n{size}" / "warmup_probe.json"
        if probe.is_file():
            record = json.loads(probe.read_text())
            lines += ["", f"The dense warm-up alone ({record['key']['steps']} steps, seed {conv.FIRST_SEED}): val "
                      f"object-pixel accuracy {record['object_pixel_accuracy']:.3f}, background-pixel accuracy "
                      f"{record['background_pixel_accuracy']:.3f} ({len(OTHER_CLASSES)} classes and background)."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Run (or reuse) every run asked for; write and print the tables and plots."""
    args = ft.parse_args(argv, rows=ROWS, sizes=[2000], iterations=3000, eval_every=250, root="runs/scratch")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = ft.cached_runs(args.root) if args.table_only else runs(args)
        if not results:
            raise SystemExit(f"--table_only: no run JSON under {args.root}/n<size>/")
    finally:
        torch.set_num_threads(threads)
    ft.write_report(args.root, "scratch", table(results, args), results)
    return results


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    main()
