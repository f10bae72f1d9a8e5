"""How well-conditioned the alignment test's gradients are, and which of our training paths pass its
float64 gate: official fp32 and our paths against the official model in float64, same random weights,
inputs and targets as `tests/alignment/test_alignment.py::test_training_step_matches_official`.

    python benchmarks/conditioning.py            # detr_r50, about a minute
    python benchmarks/conditioning.py all        # every training case of the test (several minutes)
    python benchmarks/conditioning.py r50_dc5 learned_pos

Per case: the official fp32 gradients' worst ||g - g_fp64|| / ||g_fp64|| and how many parameters
exceed 1e-4 of it; then for each of our training paths (the default; channels-last convolutions;
fused attention, i.e. `attention_dropout=0.0`; both) the float64 gate's worst ratio (<= 1 passes:
||ours - fp64|| <= max(1e-4 ||fp64||, 2 ||official fp32 - fp64||), `float64_gate`), how many
parameters fail it, and the worst relative distance to float64 and to official fp32.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import official  # noqa: E402  (the reference is importable only from the repo)
from tests.test_alignment import (  # noqa: E402
    CASES,
    TRAINING_CASES,
    float64_gate,
    make_pair,
    official_gradients,
    random_targets,
    to_float64,
    two_images,
)

import detr  # noqa: E402

# name: (create_model overrides, channels-last training)
PATHS = {
    "default": ({}, False),
    "channels-last": ({}, True),
    "fused attention": ({"attention_dropout": 0.0}, False),
    "fused attention + channels-last": ({"attention_dropout": 0.0}, True),
}


def our_gradients(name: str, overrides: dict, state: dict, channels_last: bool, images, targets) -> dict:
    num_classes = overrides.get("num_classes", 91)
    model = detr.create_model(name, **{**overrides, "num_classes": num_classes})
    model.load_state_dict(state)
    model.backbone[0].channels_last_training = channels_last
    crit = detr.create_criterion(num_classes=num_classes)
    crit.total_loss(crit(model.train()(images), targets)).backward()
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def worst_relative(grads: dict, truth: dict) -> tuple[float, str]:
    return max((((grads[k].double() - truth[k].double()).norm() / truth[k].norm()).item(), k)
               for k in truth if truth[k].norm() > 0)


def main(cases: list[str]) -> None:
    ref = official.load()
    for case in cases:
        torch.manual_seed(0)
        name, overrides = CASES[case]
        theirs, ours = make_pair(ref, name, overrides, dropout=0.0)
        num_classes = overrides.get("num_classes", 91)
        targets, images = random_targets(num_classes), two_images()
        g64 = official_gradients(ref, copy.deepcopy(theirs).double(), num_classes, to_float64(images),
                                 to_float64(targets))
        g32 = official_gradients(ref, theirs, num_classes, images, targets)
        rel = [((g32[k].double() - g64[k]).norm() / g64[k].norm()).item() for k in g64 if g64[k].norm() > 0]
        print(f"{case}: official fp32 vs float64, worst {max(rel):.1e}, {sum(r > 1e-4 for r in rel)} of "
              f"{len(rel)} parameters beyond 1e-4")
        for path, (extra, channels_last) in PATHS.items():
            g = our_gradients(name, {**overrides, "dropout": 0.0, **extra}, ours.state_dict(), channels_last,
                              images, targets)
            ratios = sorted(((float64_gate(g[k], g32[k], g64[k])[0], k) for k in g64), reverse=True)
            vs64, vs32 = worst_relative(g, g64), worst_relative(g, g32)
            print(f"  ours, {path}: float64 gate worst {ratios[0][0]:.2f}x ({ratios[0][1]}), "
                  f"{sum(r > 1 for r, _ in ratios)} of {len(ratios)} fail; worst relative vs float64 "
                  f"{vs64[0]:.1e}, vs official fp32 {vs32[0]:.1e}")


if __name__ == "__main__":
    args = sys.argv[1:] or ["r50"]
    main(TRAINING_CASES if args == ["all"] else args)
