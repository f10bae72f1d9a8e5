"""Dropout whose CPU masks come from 15-bit random integers.

On CPU, comparing 15-bit random integers with a threshold, four of them cut from each 63-bit
draw, makes dropout ~3x faster than `F.dropout` and its float Bernoulli draws (BENCHMARKS.md,
"What is on by default"); DETR drops ~100M values per DC5 training step and
draws ~1.4G attention-mask values. The price is a drop rate rounded to a multiple of 2^-15
(0.1 -> 0.100006); kept values are scaled by 1 / (1 - that rate), so the expectation is exact.
On other devices `Dropout` is `F.dropout` itself (one fused kernel there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DROP_BITS = 15


def drop_probability(p: float) -> float:
    """The rate at which `drop_mask` drops: p rounded to a multiple of 2^-15 (0.1 -> 0.100006)."""
    return round(p * 2**DROP_BITS) / 2**DROP_BITS


def kept_scale(p: float) -> float:
    """What kept values are multiplied by, so that dropout keeps the expectation: 1 / (1 - rate)."""
    rate = drop_probability(p)
    return 0.0 if rate >= 1.0 else 1.0 / (1.0 - rate)


def drop_mask(shape: torch.Size, p: float, device: torch.device, seed: int | None = None) -> Tensor:
    """Mask of the values to drop (True = dropped) at rate `drop_probability(p)`.

    With a seed, the same mask for the same seed; without one, drawn from the global RNG (so
    `torch.manual_seed` and `torch.utils.checkpoint`'s RNG replay reproduce it).
    """
    threshold = round(p * 2**DROP_BITS)
    if threshold >= 2**DROP_BITS:  # (2^15 does not fit the int16 comparison)
        return torch.ones(shape, dtype=torch.bool, device=device)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    numel = math.prod(shape)
    # One 63-bit draw gives four 15-bit ones (its int16 fields, sign bit cleared): the CPU generator
    # costs the same per 64-bit draw as per 16-bit one, so this halves the time of a mask.
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)
    draws = words.view(torch.int16)[:numel].bitwise_and_(2**DROP_BITS - 1)  # uniform on [0, 2^15)
    return (draws < threshold).view(shape)


def dropout(x: Tensor, p: float, inplace: bool = False) -> Tensor:
    """Training-mode dropout of `x` at rate p (see the module docstring for CPU's rounding of p)."""
    if p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True, inplace=inplace)
    mask = drop_mask(x.shape, p, x.device)
    out = x.masked_fill_(mask, 0.0) if inplace else x.masked_fill(mask, 0.0)
    return out.mul_(kept_scale(p))


def dropout_scale(p: float, device: torch.device) -> float:
    """The factor `dropout(x, p)` multiplies kept values by on `device`, as a Python float."""
    if device.type == "cpu":
        return kept_scale(p)
    return torch.ones(1).div_(1 - p).item()  # F.dropout's fp32 1 / (1 - p)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same attribute `p`, no parameters) computing `dropout` in training."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.inplace) if self.training else x
