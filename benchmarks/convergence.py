"""Convergence benchmark: what fast-convergence recipes buy, counted in training iterations (issue #15).

    python benchmarks/convergence.py --recipes vanilla groups --iterations 12000 --eval_every 500 \\
        --seeds 1 --root runs/convergence
    python benchmarks/convergence.py --smoke     # tiny data, 40 iterations: a check of the script (seconds)

Every recipe trains one small fixed model (`SETTINGS`: tiny conv trunk of stride 16 trained from
scratch, d=128, 3+3 layers, 16 queries, batch 8, 128-px images) on a synthetic detection set (the
demo's coloured shapes, 4 classes, 1-6 per image; 5,000 train / 200 val images, generated once under
--root) through `detr.training.train.train`, the code `detr train` runs, with a Config from
`detr.config.config_from_flags`. An "epoch" there is --eval_every iterations (TrainConfig
`steps_per_epoch`: consecutive shuffled passes over the data), so the val set's COCO AP and AP50
are measured every --eval_every iterations. The learning rate stays constant (no drop within the budget):
a drop would move with --iterations and blur what the recipes change.

Outputs under --root: `<recipe>-seed<s>.json` (the AP/AP50 curve, seconds per iteration, CPU time and
the settings), `convergence.md` (the table), `convergence.png` (AP and AP50 against iterations),
`runs/<recipe>-seed<s>/` (the training folders) and the data. A run whose JSON holds the same settings
hash (recipe overrides + fixed settings + data + seed) is not run again; --force runs everything again.
The code's version is not in the hash: after changing the training code, use --force or a new --root.

Seconds per iteration are the mean time between consecutive training steps within an epoch (the
training loop's per-step debug record), so evaluation and checkpoint writing are left out; CPU time is
this process's user + system time over the whole run (num_workers 0: data loading is in-process).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's detr, whatever the environment has installed

from detr.checkpoint import write_bytes, write_json  # noqa: E402
from detr.config import config_from_flags, recipe_options  # noqa: E402
from detr.data import make_demo_dataset  # noqa: E402
from detr.presets import FROM_SCRATCH  # noqa: E402
from detr.training import engine  # noqa: E402
from detr.training.train import train  # noqa: E402

# The fixed model and training settings (official flag names). The trunk trains from scratch at the
# transformer's rate (the official 1e-5 backbone rate is for an ImageNet backbone). Attention dropout
# 0 is the same function as the official path with dropout 0, computed by the fused kernel.
SETTINGS: dict[str, Any] = {
    "backbone": "tiny", "backbone_weights": "none", "hidden_dim": 128, "nheads": 8, "enc_layers": 3,
    "dec_layers": 3, "dim_feedforward": 512, "num_queries": 16, "dropout": 0.0, "attention_dropout": 0.0,
    "batch_size": 8, "lr": 1e-4, "lr_backbone": 1e-4, "weight_decay": 1e-4, "clip_max_norm": 0.1,
    "scales": [128], "max_size": 192, "val_scale": 128, "random_crop": False,
    "device": "cpu", "num_workers": 0, "num_classes": None,
}
# Recipe name -> option overrides (official flag names) on top of SETTINGS: vanilla, each option alone,
# and all of them together.
FAST = recipe_options({**SETTINGS, "recipe": "fast"})  # what --recipe fast sets for this model (from scratch)
CONDITIONAL = {"family": "conditional_detr", "class_loss": "focal"}
# The first --recipe fast (until 2026-12-05): 3 groups, a 500-step warm-up and lr 2e-4, no weight average.
GROUPS_WARMUP = {"num_groups": 3, "backbone_warmup": 500, "lr": 2e-4, "lr_backbone": 2e-4}
# Recipe name -> option overrides (official flag names) on top of SETTINGS: vanilla, each option alone, all of
# them together, and the recipes' steps. Spelled out, so that the cache key sees the options.
RECIPES: dict[str, dict[str, Any]] = {
    "vanilla": {},  # the official recipe
    "groups": {"num_groups": 3},  # Group DETR (arXiv 2207.13085): 3 query groups in training
    # IoU-aware classification (RT-DETR's varifocal loss) with the focal matching cost at Deformable DETR's weight 2
    "varifocal": {"class_loss": "varifocal", "set_cost_class": 2.0},
    "dn": {"dn_number": 5},  # denoising queries (DN-DETR, arXiv 2203.01305): 5 noised copies of the ground truth
    "scratch": dict(FROM_SCRATCH),  # dense backbone warm-up, then a doubled learning rate
    "all": {"num_groups": 3, "dn_number": 5, "class_loss": "varifocal", "set_cost_class": 2.0,
            "backbone_warmup": 500, "lr": 2e-4, "lr_backbone": 2e-4},  # every option
    "groups_warmup": GROUPS_WARMUP,
    "fast": FAST,  # --recipe fast: 3 groups, the weight average, a 250-step warm-up, lr 2e-4
    # Conditional DETR (arXiv 2108.06152) with its sigmoid focal head (class cost and weight 2), alone and with the
    # recipe options that apply to it (denoising queries do not): the same fixed SETTINGS, 16 queries included.
    "conditional": CONDITIONAL,
    "conditional_groups": {**CONDITIONAL, "num_groups": 3},
    "conditional_varifocal": {"family": "conditional_detr", "class_loss": "varifocal", "set_cost_class": 2.0},
    "conditional_groups_warmup": {**CONDITIONAL, **GROUPS_WARMUP},
    "conditional_groups_warmup_ema": {**CONDITIONAL, **GROUPS_WARMUP, "ema_decay": FAST["ema_decay"]},
    "conditional_fast": {**CONDITIONAL, **FAST},
}
DATA = {"num_train": 5000, "num_val": 200, "image_size": 128, "seed": 0}
# --smoke: the same model on a few 64-px images.
SMOKE_SETTINGS = {**SETTINGS, "scales": [64], "max_size": 96, "val_scale": 64}
SMOKE_DATA = {"num_train": 48, "num_val": 16, "image_size": 64, "seed": 0}
SMOKE_ITERATIONS, SMOKE_EVAL_EVERY = 40, 20
FIRST_SEED = 42  # TrainConfig's default seed; further seeds count up from it
AP50_TARGET = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), metavar="NAME",
                   help=f"recipes to run (default: all of {', '.join(RECIPES)})")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per run (default 12000)")
    p.add_argument("--eval_every", type=int, default=None, help="evaluate every this many iterations (default 500)")
    p.add_argument("--seeds", type=int, default=2,
                   help="seeds for vanilla and the best other recipe (the others run one seed); default 2")
    p.add_argument("--root", default=None, help="cache folder (default runs/convergence, runs/convergence-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny data, 40 iterations: check the script")
    p.add_argument("--force", action="store_true", help="run again even where a run's JSON has the same settings")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a loaded 2-core machine, waiting OpenMP threads spin, and "
                        "a 2-thread step measured 14x slower than a 1-thread one; only float rounding depends on it)")
    args = p.parse_args(argv)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        p.error(f"--recipes: unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    args.recipes = list(dict.fromkeys(args.recipes))
    if args.iterations is None:
        args.iterations = SMOKE_ITERATIONS if args.smoke else 12000
    if args.eval_every is None:
        args.eval_every = SMOKE_EVAL_EVERY if args.smoke else 500
    args.root = Path(args.root or ("runs/convergence-smoke" if args.smoke else "runs/convergence"))
    if args.iterations < 1 or args.eval_every < 1 or args.iterations % args.eval_every:
        p.error(f"--iterations ({args.iterations}) must be a positive multiple of --eval_every ({args.eval_every})")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def prepare_data(root: Path, data: dict[str, Any]) -> dict[str, str]:
    """The synthetic set, generated once (make_demo_dataset reuses a complete folder with the same parameters)."""
    folder = root / f"data_{data['num_train']}x{data['image_size']}px_seed{data['seed']}"
    paths = make_demo_dataset(folder, **data)
    return {k: str(v) for k, v in paths.items() if k != "root"}


def run_values(overrides: dict[str, Any], seed: int, args: argparse.Namespace,
               settings: dict[str, Any]) -> dict[str, Any]:
    """The flat options of one run (without its paths): fixed settings, the recipe's overrides, the schedule."""
    epochs = args.iterations // args.eval_every
    return {**settings, **overrides, "seed": seed, "steps_per_epoch": args.eval_every, "epochs": epochs,
            "eval_every": 1, "lr_drop": epochs + 1}  # lr_drop past the end: a constant learning rate


def settings_hash(values: dict[str, Any], data: dict[str, Any]) -> str:
    text = json.dumps({"options": values, "data": data}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StepTimes(logging.Handler):
    """Times of the training loop's per-step debug records (`train_one_epoch` logs one after every step)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[tuple[int, float]] = []  # (epoch, time)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.DEBUG and record.funcName == "train_one_epoch":
            self.times.append((int(record.args[0]), record.created))  # args: (epoch, step, ...)

    def seconds_per_iteration(self) -> float:
        """Mean gap between consecutive steps of the same epoch (evaluation and checkpoints fall between epochs)."""
        gaps = [t1 - t0 for (e0, t0), (e1, t1) in zip(self.times, self.times[1:]) if e0 == e1]
        return sum(gaps) / len(gaps) if gaps else float("nan")


@contextlib.contextmanager
def step_times() -> Iterator[StepTimes]:
    logger = logging.getLogger(engine.__name__)
    handler, level = StepTimes(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def read_curve(log_file: Path, steps_per_epoch: int, warmup_steps: int = 0) -> list[dict[str, float]]:
    """[{iteration, AP, AP50}] from the run's log.txt (one JSON line per epoch). Backbone warm-up steps
    count as iterations (each is cheaper than a DETR step, so this overstates what the warm-up costs)."""
    curve = []
    for line in log_file.read_text().splitlines():
        entry = json.loads(line)
        if "test_AP" in entry:
            curve.append({"iteration": warmup_steps + (entry["epoch"] + 1) * steps_per_epoch, "AP": entry["test_AP"],
                          "AP50": entry["test_AP50"]})
    return curve


def train_run(recipe: str, seed: int, args: argparse.Namespace, settings: dict[str, Any],
              data: dict[str, Any], paths: dict[str, str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one (recipe, seed), or reuse its JSON when it holds the same settings hash. `overrides`: the
    recipe's options (default RECIPES[recipe]); `data` enters the hash, so it names everything the run reads."""
    overrides = RECIPES[recipe] if overrides is None else overrides
    values = run_values(overrides, seed, args, settings)
    key = settings_hash(values, data)
    result_file = args.root / f"{recipe}-seed{seed}.json"
    if result_file.is_file() and not args.force:
        cached = json.loads(result_file.read_text())
        if cached.get("hash") == key:
            print(f"{recipe} seed {seed}: cached ({result_file})")
            return cached
    out_dir = args.root / "runs" / f"{recipe}-seed{seed}"
    resume = _resumable(out_dir, key, args.force)
    if not resume:
        shutil.rmtree(out_dir, ignore_errors=True)  # a run of other settings
        out_dir.mkdir(parents=True)
        (out_dir / "settings_hash").write_text(key)
    cfg = config_from_flags({**values, **paths, "output_dir": str(out_dir), "resume": resume})
    print(f"{recipe} seed {seed}: training {args.iterations} iterations -> {out_dir}"
          + (f" (going on from {resume})" if resume else ""), flush=True)
    cpu0, wall0 = os.times(), time.perf_counter()
    with step_times() as timer:
        train(cfg, progress=False)
    cpu1, wall = os.times(), time.perf_counter() - wall0
    if len(timer.times) != args.iterations and not (resume and 0 < len(timer.times) < args.iterations):
        raise RuntimeError(f"the step timer saw {len(timer.times)} steps for {args.iterations} iterations: "
                           "has train_one_epoch's per-step debug record changed?")
    result = {"recipe": recipe, "seed": seed, "hash": key, "overrides": overrides, "options": values,
              "data": data, "curve": read_curve(out_dir / "log.txt", args.eval_every, values.get("backbone_warmup", 0)),
              "seconds_per_iteration": timer.seconds_per_iteration(),
              "cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), "wall_seconds": wall,
              "torch_threads": args.threads, "timed_steps": len(timer.times), "resumed": bool(resume)}
    write_json(result_file, result, indent=1)
    last = result["curve"][-1]
    print(f"{recipe} seed {seed}: AP {last['AP']:.3f} AP50 {last['AP50']:.3f}, "
          f"{result['seconds_per_iteration']:.3f} s/iteration, {wall / 60:.1f} min", flush=True)
    return result


def _resumable(out_dir: Path, key: str, force: bool) -> str:
    """The checkpoint of a run with the same settings that was cut short (a session ended), to go on from;
    "" to start afresh. Training resumes exactly, so the curve is the one an uncut run gives."""
    marker, checkpoint = out_dir / "settings_hash", out_dir / "checkpoint.pth"
    if force or not (marker.is_file() and checkpoint.is_file()):
        return ""
    return str(checkpoint) if marker.read_text().strip() == key else ""


def first_reaching(curve: list[dict[str, float]], metric: str, target: float) -> int | None:
    """The first evaluated iteration at which `metric` >= target, or None."""
    return next((p["iteration"] for p in curve if p[metric] >= target), None)


def crossing(curve: list[dict[str, float]], metric: str, target: float) -> float | None:
    """Where `metric` first reaches `target`, linearly interpolated between the two evaluations around it (the
    first evaluation itself when it already does), or None. Puts runs evaluated at different intervals on one
    scale."""
    before = None
    for p in curve:
        if p[metric] >= target:
            if before is None:
                return float(p["iteration"])
            step = (target - before[metric]) / (p[metric] - before[metric])
            return before["iteration"] + step * (p["iteration"] - before["iteration"])
        before = p
    return None


def _interpolated(found: list[float | None]) -> str:
    return ", ".join(f"{i:.0f}" if i is not None else "-" for i in found)


def _spread(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _iterations(found: list[int | None], budget: int) -> str:
    return ", ".join(str(i) if i is not None else f"> {budget}" for i in found)


def table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, settings: dict[str, Any],
          data: dict[str, Any]) -> str:
    """The markdown report: settings, one row per recipe, and notes."""
    vanilla_ap = statistics.fmean(r["curve"][-1]["AP"] for r in results["vanilla"]) if "vanilla" in results else None
    rows = ["| recipe | overrides | seeds | iterations to AP50 >= 0.5 | iterations to vanilla's final AP | "
            "interpolated: AP50 >= 0.5 | interpolated: vanilla's final AP | "
            "final AP | final AP50 | s / iteration | CPU time (min) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for recipe, runs in results.items():
        curves = [r["curve"] for r in runs]
        to_vanilla = _iterations([first_reaching(c, "AP", vanilla_ap) for c in curves], args.iterations) \
            if vanilla_ap is not None else "n/a"
        rows.append(" | ".join(["", recipe, json.dumps(RECIPES[recipe]) if RECIPES[recipe] else "(official)",
                                ", ".join(str(r["seed"]) for r in runs),
                                _iterations([first_reaching(c, "AP50", AP50_TARGET) for c in curves], args.iterations),
                                to_vanilla, _interpolated([crossing(c, "AP50", AP50_TARGET) for c in curves]),
                                _interpolated([crossing(c, "AP", vanilla_ap) for c in curves])
                                if vanilla_ap is not None else "n/a", _spread([c[-1]["AP"] for c in curves]),
                                _spread([c[-1]["AP50"] for c in curves]),
                                _spread([r["seconds_per_iteration"] for r in runs]),
                                _spread([r["cpu_seconds"] / 60 for r in runs], 1), ""]).strip())
    total = sum(r["cpu_seconds"] for runs in results.values() for r in runs) / 3600
    model = {k: settings[k] for k in ("backbone", "hidden_dim", "nheads", "enc_layers", "dec_layers",
                                      "dim_feedforward", "num_queries", "dropout", "batch_size", "lr",
                                      "lr_backbone", "weight_decay", "clip_max_norm", "scales", "random_crop")}
    return "\n".join([
        f"# Convergence benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_commit()})",
        "",
        f"Model and training (official flag names): `{json.dumps(model)}`; tiny conv trunk of stride 16 trained "
        "from scratch (trainable BatchNorm), constant learning rate.",
        f"Data: synthetic shapes (4 classes, 1-6 per image), {data['num_train']} train / {data['num_val']} val "
        f"images of ~{data['image_size']} px (data seed {data['seed']}).",
        f"Budget: {args.iterations} iterations per run, COCO AP / AP50 on the val set every {args.eval_every} "
        f"iterations (so iterations-to-target are multiples of {args.eval_every}; `> {args.iterations}`: not "
        "reached; the interpolated columns place the crossing linearly between two evaluations). "
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch thread(s), shared with other work: times are approximate.",
        "",
        *rows,
        "",
        "Several seeds: values are the mean (min-max); iterations are listed per seed. "
        f"Total CPU time of these runs: {total:.2f} h.",
        "",
    ])


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one (step times depend on it), else the platform's."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def plot(results: dict[str, list[dict[str, Any]]], output: Path) -> None:
    """AP and AP50 against iterations, a colour per recipe and a line per seed (no pyplot global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    colours = [f"C{i}" for i in range(10)]
    for ax, metric in zip(fig.subplots(1, 2), ("AP", "AP50")):
        for i, (recipe, runs) in enumerate(results.items()):
            for j, r in enumerate(runs):
                ax.plot([p["iteration"] for p in r["curve"]], [p[metric] for p in r["curve"]],
                        color=colours[i % 10], linestyle="-" if j == 0 else "--", marker="o", markersize=3,
                        label=f"{recipe} (seed {r['seed']})")
        if metric == "AP50":
            ax.axhline(AP50_TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training iterations")
        ax.set_ylabel(f"val {metric}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, format="png")


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run (or reuse) every run the arguments ask for; write the table, the plot and print the table."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_all(args)
    finally:
        torch.set_num_threads(threads)
    settings, data = _settings(args)
    report = table(results, args, settings, data)
    write_bytes(args.root / "convergence.md", report.encode())
    plot(results, args.root / "convergence.png")
    print(report)
    print(f"wrote {args.root / 'convergence.md'}, {args.root / 'convergence.png'} and the runs' JSON files")
    return results


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    return (SMOKE_SETTINGS, SMOKE_DATA) if args.smoke else (SETTINGS, DATA)


def run_all(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every recipe with the first seed, then the other seeds for vanilla and the best other recipe (by final AP)."""
    settings, data = _settings(args)
    args.root.mkdir(parents=True, exist_ok=True)
    paths = prepare_data(args.root, data)
    seeds = [FIRST_SEED + k for k in range(args.seeds)]
    results = {recipe: [train_run(recipe, seeds[0], args, settings, data, paths)] for recipe in args.recipes}
    others = [r for r in args.recipes if r != "vanilla"]
    best = max(others, key=lambda r: results[r][0]["curve"][-1]["AP"]) if others else None
    for recipe in [r for r in ("vanilla", best) if r in results]:
        results[recipe] += [train_run(recipe, s, args, settings, data, paths) for s in seeds[1:]]
    return results


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # not the per-step records the timer enables
    main()
