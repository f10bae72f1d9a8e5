"""`--recipe NAME`: the options a training recipe sets (config.recipe_options applies them)."""

from __future__ import annotations

from typing import Any

# "fast" is the best row of the convergence benchmark (BENCHMARKS.md, "Convergence in iterations"): Group DETR with
# 3 groups plus the weight average. The varifocal head and denoising queries are left out: alone each learned slower
# than vanilla there. A recipe never changes the architecture, so official DETR weights still fine-tune with it.
RECIPES: dict[str, dict[str, Any]] = {
    "official": {},
    "fast": {"num_groups": 3},
}
# Starting values of --recipe fast that explicit flags replace (they depend on the run's length and data); the
# weight average reaches vanilla's final AP sooner in the benchmark.
FAST_DEFAULTS: dict[str, Any] = {"ema_decay": 0.9995}
# Added by --recipe fast when the backbone starts from random weights (also starting values): a random trunk keeps
# DETR on its "mean box" plateau; the dense warm-up (training/warmup.py) breaks it, and only then does a doubled
# learning rate help (BENCHMARKS.md, "Convergence in iterations").
FROM_SCRATCH: dict[str, Any] = {"backbone_warmup": 250, "lr": 2e-4, "lr_backbone": 2e-4}
# Added by --recipe fast when a trained detector is fine-tuned (--weights; also starting values): the backbone
# at four times the transformer's rate (the paper fine-tunes it at a tenth) adapts to the new images; the
# backbone's rate was the lever of the fine-tuning benchmark (BENCHMARKS.md, "Convergence where users are").
FROM_WEIGHTS: dict[str, Any] = {"lr_backbone": 4e-4}
