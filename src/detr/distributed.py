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


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Join the process group that torchrun describes in the environment, if any.

    Uses NCCL for CUDA devices and gloo otherwise. Returns True when this call started a
    group (the caller then ends it with `cleanup`). `timeout_s` bounds how long a collective
    waits for a process that died, so a broken job stops instead of hanging.
    """
    import datetime
    import os

    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def cleanup() -> None:
    """Leave the process group, if one is active."""
    if is_distributed():
        dist.destroy_process_group()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one of them."""
    if not is_distributed():
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)
