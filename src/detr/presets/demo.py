"""`detr demo`: the preset model, its data and the score from which its picture draws a detection."""

from __future__ import annotations

from typing import Any

# The convergence benchmark's best row (Conditional DETR, --recipe fast) on the same kind of data: a tiny trunk from
# scratch (no ImageNet weights offline), a thin 3+3-layer transformer, 16 queries (at most 6 shapes an image),
# 128-px images. Tuned for the demo's budget of about 10 minutes on 2 cores (BENCHMARKS.md, "Demos"): twice the
# recipe's rate and six times it for the trunk (BatchNorm keeps a trunk from scratch stable there), a constant rate
# (the weight average anneals), twice the recipe's trunk warm-up (a steadier start across seeds), and 5 epochs,
# which fit when the demo trains (and warms up) in bf16 (`run_demo`: where the device computes bf16 natively) on
# batches of one orientation each (less padding).
DEMO_PRESET: dict[str, Any] = {
    "family": "conditional_detr", "class_loss": "focal",
    "backbone": "tiny", "backbone_weights": "none", "hidden_dim": 128, "nheads": 8, "enc_layers": 3,
    "dec_layers": 3, "dim_feedforward": 512, "num_queries": 16, "dropout": 0.0, "attention_dropout": 0.0,
    "recipe": "fast", "lr": 4e-4, "lr_backbone": 1.2e-3, "backbone_warmup": 500, "batch_size": 8, "epochs": 5,
    "lr_drop": 6,
    "scales": [128], "max_size": 192, "val_scale": 128, "random_crop": False, "group_by_aspect": True,
    "num_workers": 0, "device": "cpu", "output_dir": "runs/demo", "eval_every": 1,
    "num_classes": None,  # from the data
}
# The least score drawn, by class head: sigmoid heads score lower than the softmax one; 0.4 gives the best F1 on the
# demo's val set (BENCHMARKS.md, "Why the presets are what they are").
DEMO_DRAW_THRESHOLDS: dict[str, float] = {"softmax": 0.5, "focal": 0.4, "varifocal": 0.4, "mal": 0.4}
# Enough images that the model does not overfit within the demo, few enough for its time budget.
DEMO_DATA: dict[str, int] = {"num_train": 4800, "num_val": 200, "image_size": 128}
