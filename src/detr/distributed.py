"""Helpers around torch.distributed; every one works (as a no-op) without a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def mean_across_processes(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all processes (a copy; the input is left alone)."""
    value = value.clone()
    if is_distributed():
        dist.all_reduce(value)
        value /= world_size()
    return value
