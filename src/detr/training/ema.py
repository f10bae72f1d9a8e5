"""An exponential moving average (EMA) of the model's weights: a training option (`--ema_decay`).

The optimizer trains the model as before; after every step the average moves towards it. What is evaluated
and saved as a checkpoint's "model" is the average, so that every reader of a checkpoint (eval, predict,
export, `--weights`) gets the weights that were measured; the optimizer's own weights are kept beside it as
"training_model" for an exact `--resume`.

Early updates use a shorter memory than `decay` (TensorFlow's ExponentialMovingAverage with num_updates):
update n (counted from 0) uses min(decay, (1 + n) / (10 + n)), so the average spans about the last tenth of
the steps done until that reaches `decay`. Without it a 0.999-average would still be dominated by the random
initial weights for the first thousands of steps. Buffers (BatchNorm's running statistics) are averaged too;
integer buffers are copied.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0 for the first, which copies the weights)."""
    return min(decay, (1 + updates) / (10 + updates))


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of `model`'s parameters and buffers; call `.update_parameters(model)` after each optimizer step
    and read the average from `.module` (its own copy of the model), the update count from `.n_averaged`."""
    if not 0 < decay < 1:
        raise ValueError(f"--ema_decay must be in (0, 1) (0 turns the average off), got {decay}")

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        # one call per (device, dtype) group of tensors
        if torch.is_floating_point(averaged[0]):
            weight = 1 - ema_decay_at(decay, int(n_averaged))
            torch._foreach_lerp_(averaged, current, weight)
        else:  # num_batches_tracked and other counters: the model's own value
            torch._foreach_copy_(averaged, current)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
