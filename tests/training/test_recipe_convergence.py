"""--recipe fast learns faster than the official recipe: after the same number of iterations on a small
synthetic set, its val AP50 (pycocotools) is clearly higher (issue #15's end-to-end check; the full
measurement is benchmarks/convergence.py)."""

from __future__ import annotations

import json

import pytest

from detr.config import config_from_flags
from detr.data import make_demo_dataset
from detr.training.train import train

# A small version of the benchmark's model: tiny trunk from scratch, 80-px images (5 x 5 tokens).
SETTINGS = {
    "backbone": "tiny", "backbone_weights": "none", "hidden_dim": 64, "nheads": 4, "enc_layers": 2,
    "dec_layers": 2, "dim_feedforward": 128, "num_queries": 8, "dropout": 0.0, "attention_dropout": 0.0,
    "batch_size": 8, "scales": [80], "max_size": 120, "val_scale": 80, "random_crop": False, "device": "cpu",
    "num_workers": 0, "num_classes": None, "epochs": 1, "lr_drop": 10, "seed": 0,
}
ITERATIONS = 800  # measured: official AP50 0.000, fast 0.077 (vanilla is still on DETR's plateau)


def val_ap50(out_dir) -> float:
    return json.loads((out_dir / "log.txt").read_text().splitlines()[-1])["test_AP50"]


@pytest.mark.slow
def test_recipe_fast_beats_the_official_recipe_after_the_same_iterations(tmp_path):
    paths = make_demo_dataset(tmp_path / "data", num_train=400, num_val=32, image_size=80, seed=5)
    data = {k: str(v) for k, v in paths.items() if k != "root"}
    ap50 = {}
    for recipe in ("official", "fast"):
        out = tmp_path / recipe
        train(config_from_flags({**SETTINGS, **data, "recipe": recipe, "steps_per_epoch": ITERATIONS,
                                 "output_dir": str(out)}), progress=False)
        ap50[recipe] = val_ap50(out)
    assert ap50["fast"] >= ap50["official"] + 0.03, ap50
