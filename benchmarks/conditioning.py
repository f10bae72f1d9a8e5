"""How well-conditioned the alignment test's gradients are: official fp32 and our channels-last
training against the official model in float64, same random weights and inputs as the test.

    python benchmarks/conditioning.py            # detr_r50, about a minute

Prints, per comparison, the worst parameters' ||g - g_fp64|| / ||g_fp64|| and how many exceed the
alignment test's 1e-4. If official fp32 itself is far from float64, a 1e-4 agreement with it can only
come from rounding the way it rounds (the same convolution kernels), not from being more exact.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import official  # noqa: E402  (the reference is importable only from the repo)
from tests.test_alignment import make_pair, random_targets, two_images  # noqa: E402

import detr  # noqa: E402


def gradients(model, loss_fn, images) -> dict[str, torch.Tensor]:
    loss_fn(model.train()(images)).backward()
    return {k: p.grad.double() for k, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    ref = official.load()
    torch.manual_seed(0)
    theirs, ours = make_pair(ref, "detr_r50", {}, dropout=0.0)
    targets, images = random_targets(91), two_images()
    crit = official.build_criterion(ref, num_classes=91)
    crit64 = copy.deepcopy(crit).double()
    targets64 = [{k: v.double() if v.is_floating_point() else v for k, v in t.items()} for t in targets]

    def official_loss(c, t):
        return lambda out: sum(v * c.weight_dict[k] for k, v in c(out, t).items() if k in c.weight_dict)

    g64 = gradients(copy.deepcopy(theirs).double(), official_loss(crit64, targets64), [i.double() for i in images])
    g32 = gradients(theirs, official_loss(crit, targets), images)
    ours.backbone[0].channels_last_training = True
    ours_crit = detr.create_criterion(num_classes=91)
    gcl = gradients(ours, lambda out: ours_crit.total_loss(ours_crit(out, targets)), images)
    for name, g in (("official fp32", g32), ("ours, channels-last training", gcl)):
        rel = sorted((((g[k] - g64[k]).norm() / g64[k].norm()).item(), k) for k in g64 if g64[k].norm() > 0)[::-1]
        print(f"{name} vs official float64: worst {rel[0][0]:.1e} ({rel[0][1]}), "
              f"{sum(r > 1e-4 for r, _ in rel)} of {len(rel)} parameters beyond 1e-4")


if __name__ == "__main__":
    main()
