"""`detr demo --masks`: the official two-stage recipe on the panoptic demo data (data/demo.py, panoptic=True)."""

from __future__ import annotations

from typing import Any

# Stage 1, on top of DEMO_PRESET: the detector, with the 500-step warm-up and no weight average (its boxes of
# stuff and things learned better so; BENCHMARKS.md, "Why the presets are what they are"), at --recipe fast's
# rates, as measured (the detection demo's faster rates were tuned without masks).
PANOPTIC_DEMO: dict[str, Any] = {"output_dir": "runs/demo_panoptic", "epochs": 8, "lr_drop": 7,
                                 "backbone_warmup": 500, "ema_decay": 0.0, "lr": 2e-4, "lr_backbone": 2e-4}
# Stage 2: the mask head on the frozen detector (hidden_dim 128 and nheads 8 suit its GroupNorm). At 1e-3 it leaves
# its "same mask for every query" plateau sooner than at the official 1e-4; no weight average, which lags the
# fast-moving head in so short a stage.
PANOPTIC_DEMO_MASKS: dict[str, Any] = {"masks": True, "epochs": 4, "lr_drop": 3, "lr": 1e-3, "backbone_warmup": 0,
                                       "ema_decay": 0.0}
PANOPTIC_DEMO_DATA: dict[str, int] = {"num_train": 1500, "num_val": 100, "image_size": 128}
