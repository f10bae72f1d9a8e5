"""Loss numbers for logging: full-precision outputs, one all-reduce per step, running means."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import distributed


def float_outputs(outputs: Any) -> Any:
    """The model's outputs with every floating tensor in float32, nested dicts and lists included (query
    groups, denoising queries): the loss is computed in full precision whatever the forward used."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: float_outputs(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [float_outputs(v) for v in outputs]
    return outputs  # e.g. the denoising queries' targets


def reduce_losses(losses: dict[str, Tensor], weight_dict: dict[str, float],
                  stop: bool) -> tuple[dict[str, float], bool]:
    """Average the loss terms over processes in one collective, with a "please stop" flag.

    Every process gets the same numbers, so a NaN or a stop request is seen by all of
    them at the same step and no process is left waiting in a collective. "loss" is the
    weighted total.
    """
    names = sorted(losses)
    values = torch.stack([losses[k].detach().float() for k in names] + [torch.zeros_like(losses[names[0]])])
    values[-1] = float(stop)
    if distributed.is_distributed():
        torch.distributed.all_reduce(values)
        values[:-1] /= distributed.world_size()
    stats = dict(zip(names, values[:-1].tolist()))
    stats["loss"] = sum(stats[k] * w for k, w in weight_dict.items() if k in stats)
    return stats, bool(values[-1] > 0)


class RunningMeans:
    """Running means of logged numbers (every process holds the same, already reduced, values)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}
