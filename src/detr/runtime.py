"""Where and how a model runs: the device check, mixed precision, and the score-threshold check.

Each check raises a ValueError that names the argument (`--device`, `amp`, ...) and what
would be valid, so the CLI and the Python API give the same message.
"""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("none", "bf16", "fp16")


def resolve_device(name: str | torch.device, argument: str = "device") -> torch.device:
    """`name` as a torch.device, or a ValueError naming `argument` when it is invalid or absent here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{argument} {name!r} is not a valid device (e.g. cpu, cuda, cuda:1): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{argument} {name}: no CUDA GPU is available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{argument} {name}: no such GPU; this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_amp(amp: str, device: torch.device, argument: str = "amp") -> str:
    """`amp` if `device` can run it, else a ValueError naming `argument` and the choices."""
    if amp not in AMP_MODES:
        raise ValueError(f"{argument} must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{argument} fp16 needs a CUDA device; use bf16 on CPU")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `amp` in AMP_MODES ("none": full precision)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: any CUDA GPU torch reports bf16 for, or an x86 CPU with AVX512-BF16
    or AMX (elsewhere oneDNN emulates bf16 on a CPU, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return device.type == "cpu" and any(getattr(cpu, name, lambda: False)() for name in checks)


def check_threshold(threshold: float, argument: str = "threshold") -> float:
    """`threshold` as a float, or a ValueError naming `argument` when it is not a number in [0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{argument} must be a number in [0, 1], got {threshold!r}")
    return float(threshold)
